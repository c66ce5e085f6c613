"""The subgraph blueprints in subgraphs/ are what ComfyUI's frontend accepts as a global blueprint.

ComfyUI serves every custom_nodes/<pack>/subgraphs/*.json at GET /global_subgraphs (app/subgraph_manager.py); the
frontend (1.49.6) registers each as a node titled with the file name and refuses a file whose root graph is not
exactly one node of a subgraph type defined in `definitions.subgraphs`. The node's sockets are the subgraph's
inputs/outputs. These checks need only the files (and ComfyUI 0.33's source tarball for the core node list);
.ci/comfyui_e2e.sh type-checks them against a live /object_info and runs them, tools/browser/check_blueprints.mjs
adds them in a browser.
"""
from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest

from test_templates import unknown_node_types

ROOT = Path(__file__).resolve().parents[1]
BLUEPRINTS = sorted((ROOT / "subgraphs").glob("*.json"))
SUBGRAPH_IN, SUBGRAPH_OUT = -10, -20


def load(path: Path) -> dict:
    return json.loads(path.read_text())


def _compatible(src: str, dst: str) -> bool:
    """The server's rule for linked types (equal, '*', or a shared member of comma-separated lists)."""
    a, b = set(src.split(",")), set(dst.split(","))
    return src == dst or "*" in a | b or bool(a & b)


def shape_problems(bp: dict, stem: str) -> list[str]:
    """The root graph is one node of the (one) subgraph type, named like the file, with the subgraph's sockets."""
    p = []
    sgs = (bp.get("definitions") or {}).get("subgraphs") or []
    if len(sgs) != 1:
        return [f"{len(sgs)} subgraph definitions (want 1)"]
    sg = sgs[0]
    if len(bp.get("nodes") or []) != 1 or bp["nodes"][0].get("type") != sg.get("id"):
        return ["the root graph must be exactly one node whose type is the subgraph's id"]
    root = bp["nodes"][0]
    if bp.get("links"):
        p.append("the root graph has links")
    if sg.get("name") != stem or root.get("title") != stem:
        p.append(f"subgraph name {sg.get('name')!r} / node title {root.get('title')!r} differ from the file name")
    if not sg.get("category") or not sg.get("description"):
        p.append("no category or description (the node library's folder and text)")
    if [(i["name"], i["type"]) for i in root.get("inputs") or []] != [(i["name"], i["type"]) for i in sg["inputs"]]:
        p.append("the root node's inputs are not the subgraph's inputs")
    if [(o["name"], o["type"]) for o in root.get("outputs") or []] != [(o["name"], o["type"]) for o in sg["outputs"]]:
        p.append("the root node's outputs are not the subgraph's outputs")
    if any(i.get("link") is not None for i in root.get("inputs") or []):
        p.append("a root node input is linked")
    nodes = {n["id"]: n for n in sg["nodes"]}
    feeds_widget = {sg["inputs"][l["origin_slot"]]["name"] for l in sg["links"]
                    if l["origin_id"] == SUBGRAPH_IN and l["target_id"] in nodes
                    and l["target_slot"] < len(nodes[l["target_id"]]["inputs"])
                    and "widget" in nodes[l["target_id"]]["inputs"][l["target_slot"]]}
    as_widget = {i["name"] for i in root.get("inputs") or [] if "widget" in i}
    if feeds_widget != as_widget:
        p.append(f"root widget inputs {sorted(as_widget)} != subgraph inputs that feed a widget {sorted(feeds_widget)}")
    return p


def link_problems(sg: dict) -> list[str]:
    """Every link joins existing slots and is recorded on both ends; types match the slots they join."""
    p = []
    nodes = {n["id"]: n for n in sg["nodes"]}
    links = {l["id"]: l for l in sg["links"]}
    if len(links) != len(sg["links"]):
        p.append("duplicate link ids")
    for lid, l in links.items():
        o, os_, t, ts = l["origin_id"], l["origin_slot"], l["target_id"], l["target_slot"]
        if o == SUBGRAPH_IN:
            if os_ >= len(sg["inputs"]) or lid not in sg["inputs"][os_]["linkIds"]:
                p.append(f"link {lid}: subgraph input {os_} does not list it")
                continue
            src_type = sg["inputs"][os_]["type"]
        elif o in nodes and os_ < len(nodes[o]["outputs"]):
            out = nodes[o]["outputs"][os_]
            if lid not in (out.get("links") or []):
                p.append(f"link {lid}: output {out['name']} of node {o} does not list it")
            src_type = out["type"]
        else:
            p.append(f"link {lid}: no origin slot {o}:{os_}")
            continue
        if t == SUBGRAPH_OUT:
            if ts >= len(sg["outputs"]) or lid not in sg["outputs"][ts]["linkIds"]:
                p.append(f"link {lid}: subgraph output {ts} does not list it")
                continue
            dst_type = sg["outputs"][ts]["type"]
        elif t in nodes and ts < len(nodes[t]["inputs"]):
            inp = nodes[t]["inputs"][ts]
            if inp.get("link") != lid:
                p.append(f"link {lid}: input {inp['name']} of node {t} holds link {inp.get('link')}")
            dst_type = inp["type"]
        else:
            p.append(f"link {lid}: no target slot {t}:{ts}")
            continue
        if l["type"] != src_type or not _compatible(src_type, dst_type):
            p.append(f"link {lid}: {src_type} -> {dst_type} (recorded as {l['type']})")
    for n in nodes.values():
        for i in n["inputs"]:
            if i.get("link") is not None and i["link"] not in links:
                p.append(f"node {n['id']} input {i['name']}: link {i['link']} does not exist")
        for o in n["outputs"]:
            for lid in o.get("links") or []:
                if lid not in links:
                    p.append(f"node {n['id']} output {o['name']}: link {lid} does not exist")
    for io in sg["inputs"] + sg["outputs"]:
        for lid in io["linkIds"]:
            if lid not in links:
                p.append(f"subgraph {io['name']}: link {lid} does not exist")
    state = sg.get("state") or {}
    if state.get("lastNodeId", 0) < max(nodes, default=0) or state.get("lastLinkId", 0) < max(links, default=0):
        p.append("state.lastNodeId / lastLinkId below the ids in use (new nodes would reuse them)")
    return p


def test_there_are_the_two_roto_blueprints():
    assert {p.stem for p in BLUEPRINTS} == {"Video roto from text (UniVS)", "Video roto from clicks (UniVS)"}


@pytest.mark.parametrize("path", BLUEPRINTS, ids=lambda p: p.stem)
def test_blueprint_is_one_subgraph_node_named_like_the_file(path):
    assert not shape_problems(load(path), path.stem)


@pytest.mark.parametrize("path", BLUEPRINTS, ids=lambda p: p.stem)
def test_blueprint_links_are_consistent(path):
    assert not link_problems(load(path)["definitions"]["subgraphs"][0])


@pytest.mark.parametrize("path", BLUEPRINTS, ids=lambda p: p.stem)
def test_blueprint_node_types_exist_in_comfyui_033_or_the_pack(path):
    sg = load(path)["definitions"]["subgraphs"][0]
    assert not unknown_node_types(sg), path.name
    assert any(n["type"] == "UniVS_PropagateMasks" for n in sg["nodes"])


@pytest.mark.parametrize("path", BLUEPRINTS, ids=lambda p: p.stem)
def test_blueprint_takes_frames_and_gives_mask_and_matte(path):
    sg = load(path)["definitions"]["subgraphs"][0]
    assert ("images", "IMAGE") in [(i["name"], i["type"]) for i in sg["inputs"]]
    assert [(o["name"], o["type"]) for o in sg["outputs"]] == [("mask", "MASK"), ("matte", "IMAGE")]
    assert all(io["linkIds"] for io in sg["inputs"] + sg["outputs"]), "an unconnected subgraph input/output"


def test_the_checks_catch_broken_blueprints():
    bp = load(ROOT / "subgraphs" / "Video roto from text (UniVS).json")
    stem = "Video roto from text (UniVS)"
    assert not shape_problems(bp, stem) and not link_problems(bp["definitions"]["subgraphs"][0])

    two_nodes = copy.deepcopy(bp)
    two_nodes["nodes"].append(copy.deepcopy(bp["nodes"][0]))
    assert shape_problems(two_nodes, stem)

    renamed = copy.deepcopy(bp)
    assert shape_problems(renamed, "Another name")

    no_widget = copy.deepcopy(bp)
    for i in no_widget["nodes"][0]["inputs"]:
        i.pop("widget", None)
    assert any("widget" in x for x in shape_problems(no_widget, stem))

    dangling = copy.deepcopy(bp)
    sg = dangling["definitions"]["subgraphs"][0]
    sg["links"][0]["target_slot"] += 1  # points at the wrong input
    assert link_problems(sg)

    wrong_type = copy.deepcopy(bp)
    sg = wrong_type["definitions"]["subgraphs"][0]
    mask_link = next(l for l in sg["links"] if l["type"] == "MASK")
    mask_link["type"] = "IMAGE"
    assert link_problems(sg)

    unknown = copy.deepcopy(bp)
    unknown["definitions"]["subgraphs"][0]["nodes"][0]["type"] = "UniVS_NoSuchNode"
    assert unknown_node_types(unknown["definitions"]["subgraphs"][0]) == ["UniVS_NoSuchNode"]
