"""The templates in workflows/ as ComfyUI's template browser opens them: readable, laid out, runnable as shipped.

Schema checks (widgets and links against the real node definitions) live in test_nodes_comfy.py and the CI run in
a real ComfyUI (.ci/comfyui_e2e.sh, which also type-checks every link against /object_info); these need nothing but
the JSON files, plus ComfyUI 0.33's source tarball (../shared/comfyui) for the list of core node types.
"""
from __future__ import annotations

import functools
import itertools
import json
import os
import re
import tarfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
TEMPLATES = sorted((ROOT / "workflows").glob("*.json"))
TITLE_H = 30  # LiteGraph draws a node's title bar above its `pos`
COMFY_TARBALL = Path(os.environ.get("UNIVS_COMFY_SHARED", ROOT.parent / "shared" / "comfyui")) / "comfyui-0.33.0.tar.gz"
FRONTEND_ONLY = {"MarkdownNote", "Note", "Reroute", "PrimitiveNode"}  # never sent to the server
VALIDATE_ONLY = "validate-only"


def pack_node_types() -> set[str]:
    """The node ids the pack defines (node_id="UniVS_..." in nodes/*.py), read without importing anything."""
    ids = set()
    for path in (ROOT / "nodes").glob("*.py"):
        ids |= set(re.findall(r'node_id="(UniVS_[A-Za-z0-9_]+)"', path.read_text()))
    return ids


@functools.lru_cache(maxsize=1)
def core_node_types() -> frozenset[str]:
    """Core node types of ComfyUI 0.33.0, from its source tarball: V3 `node_id="..."` and V1 NODE_CLASS_MAPPINGS
    keys in nodes.py and comfy_extras/*.py."""
    if not COMFY_TARBALL.is_file():
        pytest.skip(f"ComfyUI source tarball not found: {COMFY_TARBALL} (set UNIVS_COMFY_SHARED)")
    ids = set()
    with tarfile.open(COMFY_TARBALL) as tar:
        for member in tar:
            name = member.name
            if name.endswith(".py") and (name == "ComfyUI/nodes.py" or name.startswith("ComfyUI/comfy_extras/")):
                src = tar.extractfile(member).read().decode("utf-8", "replace")
                ids |= set(re.findall(r'node_id\s*=\s*"([^"]+)"', src))
                for block in re.findall(r"NODE_CLASS_MAPPINGS\s*=\s*\{(.*?)\n\}", src, re.S):
                    ids |= set(re.findall(r'^\s*"([^"]+)"\s*:', block, re.M))
    assert {"KSampler", "LoadVideo", "GrowMask", "WanVaceToVideo"} <= ids, "the core node list reader is broken"
    return frozenset(ids)


def unknown_node_types(graph: dict, extra: set[str] = frozenset()) -> list[str]:
    """Node types of a UI-format graph that are neither core (0.33), the pack's, frontend-only nor in `extra`."""
    known = core_node_types() | pack_node_types() | FRONTEND_ONLY | set(extra)
    return sorted({n["type"] for n in graph["nodes"] if n["type"] not in known})


def rect(node: dict) -> tuple[float, float, float, float]:
    x, y = node["pos"]
    w, h = node["size"]
    return x, y - TITLE_H, x + w, y + h


def overlaps(a, b) -> bool:
    return a[0] < b[2] and b[0] < a[2] and a[1] < b[3] and b[1] < a[3]


def test_overlap_rule_catches_a_title_bar_under_a_node():
    upper = {"pos": [0, 0], "size": [300, 100]}
    assert overlaps(rect(upper), rect({"pos": [100, 120], "size": [300, 100]}))  # title bar at 90..120
    assert not overlaps(rect(upper), rect({"pos": [100, 131], "size": [300, 100]}))


def test_there_are_templates():
    assert len(TEMPLATES) >= 7
    names = {p.stem for p in TEMPLATES}
    assert {"UniVS - Replace the background", "UniVS - Object removal (Wan VACE)",
            "UniVS - Object removal (VOID)"} <= names


@pytest.mark.parametrize("path", TEMPLATES, ids=lambda p: p.stem)
def test_node_types_exist_in_comfyui_033_or_the_pack(path):
    assert not unknown_node_types(json.loads(path.read_text())), path.name


def test_the_node_type_check_catches_an_unknown_type():
    graph = {"nodes": [{"type": "LoadVideo"}, {"type": "UniVS_TracksToMask"}, {"type": "WanVaceToVideoo"}]}
    assert unknown_node_types(graph) == ["WanVaceToVideoo"]


def model_files(wf: dict) -> list[dict]:
    """properties.models of every node: the files a template needs beyond the pack's own."""
    return [m for n in wf["nodes"] for m in (n.get("properties") or {}).get("models") or []]


def model_problems(wf: dict) -> list[str]:
    """A template that needs model files the pack does not ship must be validate-only (CI cannot run it), its
    loaders must name the files they declare, and its note must say where each file goes."""
    problems = []
    files = model_files(wf)
    ci = (wf.get("extra") or {}).get("univs_ci")
    if ci not in (None, VALIDATE_ONLY):
        problems.append(f"unknown extra.univs_ci {ci!r}")
    if files and ci != VALIDATE_ONLY:
        problems.append("needs model files but is not marked validate-only")
    if ci == VALIDATE_ONLY and not files:
        problems.append("validate-only without any declared model file (properties.models)")
    notes = "\n".join(n["widgets_values"][0] for n in wf["nodes"] if n["type"] in ("MarkdownNote", "Note"))
    for n in wf["nodes"]:
        for m in (n.get("properties") or {}).get("models") or []:
            if m["name"] not in n["widgets_values"]:
                problems.append(f"{n['type']} declares {m['name']} but loads {n['widgets_values']}")
            if not str(m.get("url", "")).startswith("https://"):
                problems.append(f"{m['name']}: no download URL")
            if m["name"] not in notes or f"ComfyUI/models/{m['directory']}/" not in notes:
                problems.append(f"the note does not say that {m['name']} goes into ComfyUI/models/{m['directory']}/")
    return problems


@pytest.mark.parametrize("path", TEMPLATES, ids=lambda p: p.stem)
def test_models_not_shipped_make_a_template_validate_only_with_a_note_naming_them(path):
    assert not model_problems(json.loads(path.read_text())), path.name


def test_the_model_rule_catches_a_template_ci_would_try_to_run():
    wf = json.loads((ROOT / "workflows" / "UniVS - Object removal (Wan VACE).json").read_text())
    assert model_files(wf) and not model_problems(wf)
    del wf["extra"]["univs_ci"]
    assert model_problems(wf) == ["needs model files but is not marked validate-only"]
    note = next(n for n in wf["nodes"] if n["type"] == "MarkdownNote")
    note["widgets_values"][0] = "models: see the internet"
    assert len(model_problems(wf)) == 1 + len(model_files(wf))


def test_the_background_template_composites_the_tracked_object_over_a_new_background():
    """The chain CI runs and pixel-checks (.ci/check_composite_output.py): frames -> UniVS -> mask -> composite
    over Empty Image -> Create Video -> Save Video, with no generative model."""
    wf = json.loads((ROOT / "workflows" / "UniVS - Replace the background.json").read_text())
    nodes = {n["id"]: n for n in wf["nodes"]}
    into = {(nodes[d]["type"], nodes[d]["inputs"][ds]["name"]): nodes[s]["type"] for _, s, _, d, ds, _ in wf["links"]}
    assert into[("ImageCompositeMasked", "destination")] == "EmptyImage"
    assert into[("ImageCompositeMasked", "source")] == "GetVideoComponents"
    assert into[("ImageCompositeMasked", "mask")] == "GrowMask"
    assert into[("GrowMask", "mask")] == "UniVS_TracksToMask"
    assert into[("CreateVideo", "images")] == "ImageCompositeMasked"
    assert into[("CreateVideo", "fps")] == "GetVideoComponents"
    assert into[("SaveVideo", "video")] == "CreateVideo"
    assert not model_files(wf) and "univs_ci" not in wf["extra"]
    assert wf["extra"].get("univs_ci_check") == "composite-over-colour"


@pytest.mark.parametrize("path", TEMPLATES, ids=lambda p: p.stem)
def test_no_two_nodes_overlap(path):
    nodes = json.loads(path.read_text())["nodes"]
    for a, b in itertools.combinations(nodes, 2):
        assert not overlaps(rect(a), rect(b)), f"{path.name}: {a['type']} #{a['id']} overlaps {b['type']} #{b['id']}"


@pytest.mark.parametrize("path", TEMPLATES, ids=lambda p: p.stem)
def test_template_is_browsable(path):
    """The browser shows the file name as the title and needs a same-name .jpg as the thumbnail."""
    assert path.stem.startswith("UniVS - ") and "_" not in path.stem
    thumb = path.with_suffix(".jpg")
    assert thumb.is_file() and thumb.read_bytes()[:3] == b"\xff\xd8\xff", f"{thumb.name}: missing or not a JPEG"


@pytest.mark.parametrize("path", TEMPLATES, ids=lambda p: p.stem)
def test_template_links_are_consistent(path):
    wf = json.loads(path.read_text())
    nodes = {n["id"]: n for n in wf["nodes"]}
    for link_id, src, src_slot, dst, dst_slot, typ in wf["links"]:
        assert link_id in nodes[src]["outputs"][src_slot]["links"], (path.name, link_id)
        assert nodes[dst]["inputs"][dst_slot]["link"] == link_id, (path.name, link_id)


@pytest.mark.parametrize("path", TEMPLATES, ids=lambda p: p.stem)
def test_videos_are_the_sample_the_pack_places_in_input(path):
    from conftest import load_pack

    runtime = __import__(load_pack().__name__ + ".nodes.runtime", fromlist=["SAMPLE_NAME"])
    for n in json.loads(path.read_text())["nodes"]:
        if n["type"] == "LoadVideo":
            assert n["widgets_values"][0] == runtime.SAMPLE_NAME


@pytest.mark.parametrize("path", TEMPLATES, ids=lambda p: p.stem)
def test_exporters_get_the_video_frame_rate(path):
    """An IMAGE batch carries no frame rate: the tracking node must get Get Video Components' fps."""
    wf = json.loads(path.read_text())
    nodes = {n["id"]: n for n in wf["nodes"]}
    for n in nodes.values():
        if n["type"] in ("UniVS_PropagateMasks", "UniVS_PanopticVideo"):
            linked = {i["name"]: i.get("link") for i in n["inputs"]}
            if linked.get("images"):
                assert linked.get("fps"), f"{path.name}: {n['type']} gets IMAGE frames but no fps"
            else:
                assert linked.get("video"), f"{path.name}: {n['type']} has no frames"
