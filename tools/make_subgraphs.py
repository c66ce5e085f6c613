"""Write the pack's subgraph blueprints (subgraphs/*.json) from short descriptions and a live /object_info.

ComfyUI (app/subgraph_manager.py) serves every `custom_nodes/<pack>/subgraphs/*.json` at GET /global_subgraphs;
the frontend registers each file as a node "SubgraphBlueprint.<file name>" whose title is the file name, in the node
library under "Subgraph Blueprints/<category>" (the category and description are those of the subgraph
definition). A blueprint file is a UI-format workflow whose root graph is ONE node whose `type` is the id of the
subgraph in `definitions.subgraphs` (the frontend refuses anything else). The subgraph's inputs/outputs are the
node's sockets; an input linked to a widget inside becomes a widget on the node.

Interior nodes are built like the templates' (tools/make_templates.py: slots and widget order from /object_info).
Ids are uuid5 of the blueprint name, so regenerating gives the same files.

    python tools/make_subgraphs.py --server http://127.0.0.1:8188
"""
from __future__ import annotations

import argparse
import json
import sys
import uuid
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from make_templates import BUILTIN, GAP_X, Node, _layout, fetch_object_info, ui_node  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "subgraphs"
CATEGORY = "UniVS"  # -> "Subgraph Blueprints/UniVS" in the node library
NAMESPACE = uuid.UUID("5b0e7d1c-3f0a-4c53-9a51-2f1d0f6b7e11")  # uuid5 namespace of this pack's blueprint ids
SEARCH_ALIASES = ["univs", "roto", "rotoscope", "matte", "video mask", "track object", "video segmentation"]
IO_W = 150  # width of the subgraph's input / output panels


@dataclass
class Port:
    """A subgraph input (`targets`: (node key, input name) it feeds) or output (`source`: (node key, output))."""
    name: str
    type: str
    targets: tuple[tuple[str, str], ...] = ()
    source: tuple[str, str] | None = None
    label: str | None = None


def _uid(*parts: str) -> str:
    return str(uuid.uuid5(NAMESPACE, "/".join(parts)))


def build_blueprint(name: str, description: str, nodes: list[Node], links: list[tuple[str, str, str, str]],
                    inputs: list[Port], outputs: list[Port], info: dict) -> dict:
    ids = {n.key: i + 1 for i, n in enumerate(nodes)}
    by_key = {n.key: n for n in nodes}
    for src, _, dst, _ in links:
        if src not in ids or dst not in ids:
            raise ValueError(f"{name}: link {src} -> {dst} names a node that is not in the blueprint")
    # link rows: interior links first, then subgraph input -> node, then node -> subgraph output
    rows = []  # (id, origin key | -10, origin slot, target key | -20, target input/slot, type)
    for src, out_name, dst, in_name in links:
        rows.append([src, out_name, dst, in_name])
    for slot, port in enumerate(inputs):
        for key, in_name in port.targets:
            rows.append([-10, slot, key, in_name])
    for slot, port in enumerate(outputs):
        rows.append([port.source[0], port.source[1], -20, slot])
    link_ids = list(range(1, len(rows) + 1))

    positions = _layout(nodes, info, x0=IO_W + GAP_X)
    ui_nodes = []
    for n in nodes:
        in_links = {r[3]: lid for lid, r in zip(link_ids, rows) if r[2] == n.key}
        out_links: dict[str, list[int]] = {}
        for lid, r in zip(link_ids, rows):
            if r[0] == n.key:
                out_links.setdefault(r[1], []).append(lid)
        pos, size = positions[n.key]
        try:
            ui_nodes.append(ui_node(n, ids[n.key], pos, size, info[n.type], in_links, out_links))
        except ValueError as e:
            raise ValueError(f"{name}: {e}") from None
    node_by_id = {u["id"]: u for u in ui_nodes}

    def in_slot(key: str, in_name: str) -> int:
        return next(i for i, x in enumerate(node_by_id[ids[key]]["inputs"]) if x["name"] == in_name)

    def out_slot(key: str, out_name: str) -> int:
        return info[by_key[key].type]["output_name"].index(out_name)

    sg_links = []
    for lid, (o, o_slot, t, t_slot) in zip(link_ids, rows):
        if o == -10:
            origin, origin_slot, typ = -10, o_slot, inputs[o_slot].type
        else:
            origin, origin_slot = ids[o], out_slot(o, o_slot)
            typ = info[by_key[o].type]["output"][origin_slot]
        if t == -20:
            target, target_slot = -20, t_slot
        else:
            target, target_slot = ids[t], in_slot(t, t_slot)
        sg_links.append({"id": lid, "origin_id": origin, "origin_slot": origin_slot, "target_id": target,
                         "target_slot": target_slot, "type": typ if isinstance(typ, str) else "COMBO"})

    right = max(p[0] + s[0] for p, s in positions.values())
    in_h, out_h = 40 + 20 * len(inputs), 40 + 20 * len(outputs)
    in_box = [0, 0, IO_W, in_h]
    out_box = [right + GAP_X, 0, IO_W, out_h]
    sg_inputs, sg_outputs = [], []
    for slot, port in enumerate(inputs):
        entry = {"id": _uid(name, "input", port.name), "name": port.name, "type": port.type,
                 "linkIds": [lid for lid, r in zip(link_ids, rows) if r[0] == -10 and r[1] == slot],
                 "pos": [IO_W - 20, 20 + 20 * slot]}
        if port.label:
            entry["label"] = port.label
        sg_inputs.append(entry)
    for slot, port in enumerate(outputs):
        entry = {"id": _uid(name, "output", port.name), "name": port.name, "type": port.type,
                 "linkIds": [lid for lid, r in zip(link_ids, rows) if r[2] == -20 and r[3] == slot],
                 "pos": [right + GAP_X + 20, 20 + 20 * slot]}
        if port.label:
            entry["label"] = port.label
        sg_outputs.append(entry)

    sg_id = _uid(name, "subgraph")
    definition = {
        "id": sg_id, "version": 1,
        "state": {"lastGroupId": 0, "lastNodeId": len(nodes), "lastLinkId": len(sg_links), "lastRerouteId": 0},
        "revision": 0, "config": {}, "name": name,
        "inputNode": {"id": -10, "bounding": in_box}, "outputNode": {"id": -20, "bounding": out_box},
        "inputs": sg_inputs, "outputs": sg_outputs, "widgets": [],
        "nodes": ui_nodes, "groups": [], "links": sg_links, "extra": {},
        "category": CATEGORY, "description": description,
    }
    # the one root node: the subgraph as a node, its sockets = the subgraph's inputs / outputs; an input that
    # feeds a widget inside is a widget on the node too (the frontend promotes it)
    widget_inputs = set()
    for port in inputs:
        for key, in_name in port.targets:
            spec = next((x for x in node_by_id[ids[key]]["inputs"] if x["name"] == in_name), {})
            if "widget" in spec:
                widget_inputs.add(port.name)
    root_inputs = []
    for port in inputs:
        entry = {"name": port.name, "type": port.type, "link": None}
        if port.label:
            entry["label"] = port.label
        if port.name in widget_inputs:
            entry["widget"] = {"name": port.name}
        root_inputs.append(entry)
    root_outputs = [{"name": p.name, "type": p.type, "links": []} for p in outputs]
    rows_h = max(len(inputs) - len(widget_inputs), len(outputs))
    root = {"id": len(nodes) + 1, "type": sg_id, "pos": [0, 0],
            "size": [320, 24 * rows_h + 28 * len(widget_inputs) + 30], "flags": {}, "order": 0, "mode": 0,
            "inputs": root_inputs, "outputs": root_outputs, "title": name,
            "properties": {"cnr_id": "comfyui-univs"}, "widgets_values": []}
    return {"id": _uid(name, "workflow"), "revision": 0, "last_node_id": root["id"], "last_link_id": 0,
            "nodes": [root], "links": [], "groups": [], "definitions": {"subgraphs": [definition]},
            "config": {}, "extra": {"BlueprintDescription": description, "BlueprintSearchAliases": SEARCH_ALIASES},
            "version": 0.4}


# ============================================================================================== the blueprints
def _core(col_model=0):
    """Model, tracking, masks and the matte image, shared by both blueprints (prompts come from `prompt`)."""
    return [Node("model", "UniVS_LoadModel", col_model, {"checkpoint": BUILTIN}),
            Node("track", "UniVS_PropagateMasks", 2),
            Node("mask", "UniVS_TracksToMask", 3),
            Node("matte", "MaskToImage", 3)]


CORE_LINKS = [("model", "model", "track", "model"), ("prompt", "prompts", "track", "prompts"),
              ("track", "tracks", "mask", "tracks"), ("mask", "masks", "matte", "mask")]
OUTPUTS = [Port("mask", "MASK", source=("mask", "masks")), Port("matte", "IMAGE", source=("matte", "IMAGE"))]


def roto_from_text(info):
    description = ("UniVS video rotoscoping from a description: frames (IMAGE batch) + one expression per line "
                   "('label: expression') -> MASK batch of the described objects and the matte as an IMAGE batch. "
                   "Runs with the built-in model; pick an official UniVS checkpoint in 'checkpoint'.")
    nodes = [Node("prompt", "UniVS_TextRefer", 1, {"expressions": "the person on the left"}), *_core()]
    inputs = [Port("images", "IMAGE", (("track", "images"),)),
              Port("expressions", "STRING", (("prompt", "expressions"),)),
              Port("checkpoint", "COMBO", (("model", "checkpoint"),))]
    return build_blueprint("Video roto from text (UniVS)", description, nodes, CORE_LINKS, inputs, OUTPUTS, info)


def roto_from_clicks(info):
    description = ("UniVS video rotoscoping from clicks or a box: frames (IMAGE batch) -> MASK batch of the object "
                   "and the matte as an IMAGE batch. Connect points (KJNodes / core JSON) or a BOUNDING_BOX, or open "
                   "the subgraph and click in the Prompt Target editor (queue once to see the frames there). "
                   "frame_index = the frame the clicks are on; tracking runs both ways from it.")
    nodes = [Node("prompt", "UniVS_PromptTarget", 1, {"label": "object"}, (460, 560)), *_core()]
    inputs = [Port("images", "IMAGE", (("track", "images"), ("prompt", "image"))),
              Port("frame_index", "INT", (("prompt", "frame_index"),)),
              Port("positive_coords", "STRING", (("prompt", "positive_coords"),)),
              Port("negative_coords", "STRING", (("prompt", "negative_coords"),)),
              Port("bboxes", "BOUNDING_BOX", (("prompt", "bboxes"),)),
              Port("checkpoint", "COMBO", (("model", "checkpoint"),))]
    return build_blueprint("Video roto from clicks (UniVS)", description, nodes, CORE_LINKS, inputs, OUTPUTS, info)


BLUEPRINTS = [roto_from_text, roto_from_clicks]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--server", default="http://127.0.0.1:8188", help="a running ComfyUI with this pack loaded")
    args = ap.parse_args()
    info = fetch_object_info(args.server)
    OUT.mkdir(exist_ok=True)
    for make in BLUEPRINTS:
        bp = make(info)
        path = OUT / f"{bp['definitions']['subgraphs'][0]['name']}.json"
        path.write_text(json.dumps(bp, indent=1) + "\n")
        print("wrote", path.relative_to(ROOT))


if __name__ == "__main__":
    main()
