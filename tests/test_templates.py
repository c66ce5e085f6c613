"""The templates in workflows/ as ComfyUI's template browser opens them: readable, laid out, runnable as shipped.

Schema checks (widgets and links against the real node definitions) live in test_nodes_comfy.py and the CI run in
a real ComfyUI (.ci/comfyui_e2e.sh); these need nothing but the JSON files.
"""
from __future__ import annotations

import itertools
import json
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
TEMPLATES = sorted((ROOT / "workflows").glob("*.json"))
TITLE_H = 30  # LiteGraph draws a node's title bar above its `pos`


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
    assert len(TEMPLATES) >= 4


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
