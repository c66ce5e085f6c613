"""Write the pack's templates (workflows/*.json, ComfyUI's UI format) from short descriptions.

Node slots and widget order come from a running ComfyUI's /object_info, so every link matches the schemas; nodes
are laid out in columns with sizes taken from the node's content, so no two nodes overlap (tests check both).
The file name is what ComfyUI's template browser shows as a pack template's title.

    python tools/make_templates.py --server http://127.0.0.1:8188
"""
from __future__ import annotations

import argparse
import json
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "workflows"
SAMPLE = "univs_sample.mp4"
BUILTIN = "univs_small (built-in)"
WIDGET_TYPES = {"INT", "FLOAT", "STRING", "BOOLEAN", "COMBO"}
UPLOAD_FLAGS = ("image_upload", "video_upload", "audio_upload")
TITLE_H, GAP_X, GAP_Y = 36, 60, 50  # LiteGraph draws the title above `pos`; gaps leave room for link wires

NOTE_HEAD = (
    "## UniVS for ComfyUI\n"
    "Runs as it is with the built-in model **univs_small (built-in)** (offline, CPU friendly) on the sample clip "
    "`univs_sample.mp4`, which the pack copies into ComfyUI's `input/` folder at start-up (never over a file of "
    "that name). Use your own clip in *Load Video*.\n\n"
    "Official checkpoints (R50, Swin-T/B/L), the CLIP text-encoder file and the category-embedding file: UniVS "
    "Model_zoo on GitHub (MinghanLi/UniVS). Put them in `ComfyUI/models/univs/` and pick them in "
    "**Load UniVS Model**.\n\n"
)


@dataclass
class Node:
    key: str
    type: str
    col: int
    widgets: dict = field(default_factory=dict)
    size: tuple[int, int] | None = None
    title: str | None = None


def fetch_object_info(server: str) -> dict:
    with urllib.request.urlopen(server.rstrip("/") + "/object_info", timeout=60) as r:
        return json.load(r)


def _is_widget(spec) -> bool:
    typ = spec[0]
    opts = spec[1] if len(spec) > 1 and isinstance(spec[1], dict) else {}
    return (isinstance(typ, list) or typ in WIDGET_TYPES) and not opts.get("forceInput")


def _ordered(info: dict):
    """(name, spec) of every input in the schema's order (required first)."""
    order = info.get("input_order") or {k: list(v) for k, v in info["input"].items()}
    for section in ("required", "optional"):
        for name in order.get(section, []):
            yield name, info["input"][section][name]


def _default(spec):
    typ, opts = spec[0], (spec[1] if len(spec) > 1 and isinstance(spec[1], dict) else {})
    if "default" in opts:
        return opts["default"]
    if isinstance(typ, list):
        return typ[0]
    if typ == "COMBO":
        return opts["options"][0]
    return {"INT": 0, "FLOAT": 0.0, "STRING": "", "BOOLEAN": False}[typ]


def _estimate_size(info: dict, node: Node) -> tuple[int, int]:
    """Width/height of the node body: one row per socket pair, one per widget (multiline text gets four)."""
    if node.size:
        return node.size
    sockets = sum(1 for _, s in _ordered(info) if not _is_widget(s))
    rows = max(sockets, len(info["output"]))
    widget_h = 0
    for _, spec in _ordered(info):
        if _is_widget(spec):
            multiline = len(spec) > 1 and isinstance(spec[1], dict) and spec[1].get("multiline")
            widget_h += 110 if multiline else 28
    return 360, 24 * rows + widget_h + 24


def build(name: str, note: str, nodes: list[Node], links: list[tuple[str, str, str, str]], info: dict,
          note_size=(640, 260)) -> dict:
    """UI-format workflow: a note, then `nodes` in columns, wired by (src, output, dst, input) names."""
    nodes = [Node("note", "MarkdownNote", 0, {"text": NOTE_HEAD + note}, note_size)] + nodes
    ids = {n.key: i + 1 for i, n in enumerate(nodes)}
    out_nodes, wired = [], []
    for k, (src, out_name, dst, in_name) in enumerate(links, start=1):
        wired.append((k, src, out_name, dst, in_name))
    positions = _layout(nodes, info)
    for n in nodes:
        if n.type == "MarkdownNote":  # a frontend-only node: not in /object_info
            pos, size = positions[n.key]
            out_nodes.append({"id": ids[n.key], "type": n.type, "pos": list(pos), "size": list(size), "flags": {},
                              "order": ids[n.key] - 1, "mode": 0, "inputs": [], "outputs": [], "properties": {},
                              "widgets_values": [n.widgets["text"]], "color": "#432", "bgcolor": "#653"})
            continue
        nd = info[n.type]
        inputs, widgets_values = [], []
        for in_name, spec in _ordered(nd):
            link = next((w for w in wired if w[3] == n.key and w[4] == in_name), None)
            typ = spec[0] if isinstance(spec[0], str) else "COMBO"
            if _is_widget(spec):
                value = n.widgets.get(in_name, _default(spec))
                widgets_values.append(value)
                opts = spec[1] if len(spec) > 1 and isinstance(spec[1], dict) else {}
                if any(opts.get(f) for f in UPLOAD_FLAGS):
                    widgets_values.append("image")  # the upload button's own (unused) widget value
                if link:
                    inputs.append({"name": in_name, "type": typ, "widget": {"name": in_name}, "link": link[0]})
            else:
                inputs.append({"name": in_name, "type": typ, "link": link[0] if link else None})
        unknown = set(n.widgets) - {k for k, _ in _ordered(nd)}
        if unknown:
            raise ValueError(f"{name}: {n.type} has no input {sorted(unknown)}")
        outputs = []
        for slot, (typ, out_name) in enumerate(zip(nd["output"], nd["output_name"])):
            outputs.append({"name": out_name, "type": typ if isinstance(typ, str) else "COMBO",
                            "links": [w[0] for w in wired if w[1] == n.key and w[2] == out_name],
                            "slot_index": slot})
        pos, size = positions[n.key]
        node = {"id": ids[n.key], "type": n.type, "pos": list(pos), "size": list(size), "flags": {},
                "order": ids[n.key] - 1, "mode": 0, "inputs": inputs, "outputs": outputs,
                "properties": {"Node name for S&R": n.type}, "widgets_values": widgets_values}
        if n.type.startswith("UniVS_"):
            node["properties"]["cnr_id"] = "comfyui-univs"
        if n.title:
            node["title"] = n.title
        out_nodes.append(node)
    link_rows = []
    for k, src, out_name, dst, in_name in wired:
        src_slot = info[_type(nodes, src)]["output_name"].index(out_name)
        dst_node = next(x for x in out_nodes if x["id"] == ids[dst])
        dst_slot = next(i for i, x in enumerate(dst_node["inputs"]) if x["name"] == in_name)
        typ = dst_node["inputs"][dst_slot]["type"]
        src_typ = info[_type(nodes, src)]["output"][src_slot]
        link_rows.append([k, ids[src], src_slot, ids[dst], dst_slot, src_typ if isinstance(src_typ, str) else typ])
    return {"last_node_id": len(nodes), "last_link_id": len(links), "nodes": out_nodes, "links": link_rows,
            "groups": [], "config": {}, "extra": {"ds": {"scale": 0.7, "offset": [40, 320]}, "info": {"name": name}},
            "version": 0.4}


def _type(nodes: list[Node], key: str) -> str:
    return next(n.type for n in nodes if n.key == key)


def _layout(nodes: list[Node], info: dict) -> dict[str, tuple[tuple[int, int], tuple[int, int]]]:
    """Columns left to right; the note sits above column 0. Returns key -> (pos, size)."""
    sizes = {n.key: n.size or _estimate_size(info[n.type], n) for n in nodes}
    cols = sorted({n.col for n in nodes if n.key != "note"})
    x, out = 0, {}
    note = sizes["note"]
    out["note"] = ((0, -note[1] - TITLE_H - GAP_Y), note)
    for c in cols:
        members = [n for n in nodes if n.col == c and n.key != "note"]
        y = 0
        for n in members:
            out[n.key] = ((x, y), sizes[n.key])
            y += sizes[n.key][1] + TITLE_H + GAP_Y
        x += max(sizes[n.key][0] for n in members) + GAP_X
    return out


# ============================================================================================== the templates
def _frames(col=0) -> list[Node]:
    return [Node("video", "LoadVideo", col, {"file": SAMPLE}, (340, 520)),
            Node("comp", "GetVideoComponents", col)]


def _model(col) -> Node:
    return Node("model", "UniVS_LoadModel", col, {"checkpoint": BUILTIN})


PREVIEW = (420, 380)


def text_to_roto(info):
    note = ("**Text -> roto matte -> alpha export.** Describe the object in *Text Refer* (one line per object, "
            "`label: expression`), track it, check the overlay, and find a ProRes 4444 .mov with alpha plus a "
            "16-bit PNG matte sequence in `output/univs/`. The video's frame rate goes from *Get Video Components* "
            "to the tracks, so the matte plays in sync with the plate.")
    nodes = [*_frames(0), _model(0),
             Node("text", "UniVS_TextRefer", 1, {"expressions": "cross: the cross moving down"}),
             Node("track", "UniVS_PropagateMasks", 1),
             Node("overlay", "UniVS_OverlayPreview", 2),
             Node("preview", "PreviewImage", 2, size=PREVIEW),
             Node("mov", "UniVS_ExportMatte", 3, {"select": "cross", "format": "prores4444_mov",
                                                  "filename_prefix": "univs/roto", "feather": 1.0}),
             Node("png", "UniVS_ExportMatte", 3, {"select": "cross", "format": "png16",
                                                  "filename_prefix": "univs/roto_png", "feather": 1.0})]
    links = [("video", "VIDEO", "comp", "video"), ("comp", "images", "track", "images"),
             ("comp", "fps", "track", "fps"), ("model", "model", "track", "model"),
             ("text", "prompts", "track", "prompts"), ("track", "tracks", "overlay", "tracks"),
             ("comp", "images", "overlay", "images"), ("overlay", "overlay", "preview", "images"),
             ("track", "tracks", "mov", "tracks"), ("comp", "images", "mov", "images"),
             ("track", "tracks", "png", "tracks")]
    return build("UniVS: text to roto matte", note, nodes, links, info)


def clicks_two_objects(info):
    note = ("**Clicks on two objects, with a correction on a later frame.** Queue once to see the frames in each "
            "*Prompt Target* editor: click = positive, right/shift-click = negative, drag = box. Object 1 (triangle) "
            "is clicked on frame 0 and corrected on frame 12 (same object id, later frame). Object 2 (ring) enters at "
            "frame 10, so it gets a box on frame 17 and direction `both` tracks it backwards too.")
    editor = (460, 560)

    def target(key, col, frame, oid, label, state):
        return Node(key, "UniVS_PromptTarget", col, {"frame_index": frame, "object_id": oid, "label": label,
                                                     "editor": json.dumps(state)}, editor)

    tri = {"version": 1, "objects": [{"id": 1, "label": "triangle", "frames": {
        "0": {"points": [[199, 68, 1], [195, 65, 1], [208, 78, 0]], "box": None}}}]}
    ring = {"version": 1, "objects": [{"id": 2, "label": "ring", "frames": {"17": {"points": [], "box": [0, 80, 28, 153]}}}]}
    fix = {"version": 1, "objects": [{"id": 1, "label": "triangle", "frames": {"12": {"points": [[211, 152, 1]], "box": None}}}]}
    nodes = [*_frames(0), _model(0),
             target("t1", 1, 0, 1, "triangle", tri), target("t2", 2, 17, 2, "ring", ring),
             target("t3", 3, 12, 1, "triangle", fix),
             Node("track", "UniVS_PropagateMasks", 4),
             Node("legend", "UniVS_TracksLegend", 4), Node("legend_view", "PreviewAny", 4, size=(360, 260)),
             Node("overlay", "UniVS_OverlayPreview", 5), Node("preview", "PreviewImage", 5, size=PREVIEW),
             Node("mask", "UniVS_TracksToMask", 6, {"select": "ring"}), Node("mask_view", "MaskPreview", 6, size=PREVIEW)]
    links = [("video", "VIDEO", "comp", "video"), ("comp", "images", "t1", "image"), ("comp", "images", "t2", "image"),
             ("comp", "images", "t3", "image"), ("t1", "prompts", "t2", "prompts"), ("t2", "prompts", "t3", "prompts"),
             ("model", "model", "track", "model"), ("t3", "prompts", "track", "prompts"),
             ("comp", "images", "track", "images"), ("comp", "fps", "track", "fps"),
             ("track", "tracks", "overlay", "tracks"), ("comp", "images", "overlay", "images"),
             ("overlay", "overlay", "preview", "images"), ("track", "tracks", "legend", "tracks"),
             ("legend", "legend", "legend_view", "source"), ("track", "tracks", "mask", "tracks"),
             ("mask", "masks", "mask_view", "mask")]
    return build("UniVS: clicks on two objects with a correction", note, nodes, links, info)


def panoptic(info):
    note = ("**Panoptic video with a legend.** Every object of the vocabulary gets an id that stays stable through "
            "the clip. `model default` uses the checkpoint's classes; pick a built-in dataset vocabulary or `custom` "
            "(typed classes) with an official model and its text encoder. The id map is *Overlay Preview* at "
            "opacity 1 without frames.")
    nodes = [*_frames(0), _model(0),
             Node("pan", "UniVS_PanopticVideo", 1),
             Node("legend_view", "PreviewAny", 1, size=(360, 300)),
             Node("ids", "UniVS_OverlayPreview", 2, {"opacity": 1.0, "outline": False, "labels": False}),
             Node("ids_view", "PreviewImage", 2, size=PREVIEW),
             Node("overlay", "UniVS_OverlayPreview", 3), Node("preview", "PreviewImage", 3, size=PREVIEW)]
    links = [("video", "VIDEO", "comp", "video"), ("comp", "images", "pan", "images"), ("comp", "fps", "pan", "fps"),
             ("model", "model", "pan", "model"), ("pan", "legend", "legend_view", "source"),
             ("pan", "tracks", "ids", "tracks"), ("ids", "overlay", "ids_view", "images"),
             ("pan", "tracks", "overlay", "tracks"), ("comp", "images", "overlay", "images"),
             ("overlay", "overlay", "preview", "images")]
    return build("UniVS: panoptic video with legend", note, nodes, links, info)


def long_clip(info):
    note = ("**Long clips with bounded memory.** The VIDEO from *Load Video* goes straight into tracking and "
            "*Export Matte*: frames are decoded in windows and never held as an IMAGE batch, masks stay compressed, "
            "and the mattes are written frame by frame at the video's own frame rate. The object is a box on frame 0 "
            "in the *Prompt Target* editor (upload a still to draw on it), or use *Text Refer* instead.")
    state = {"version": 1, "objects": [{"id": 1, "label": "cross", "frames": {
        "0": {"points": [[84, 83, 1]], "box": [50, 49, 119, 118]}}}]}
    nodes = [Node("video", "LoadVideo", 0, {"file": SAMPLE}, (340, 520)), _model(0),
             Node("target", "UniVS_PromptTarget", 1, {"label": "cross", "object_id": 1, "editor": json.dumps(state)},
                  (460, 560)),
             Node("track", "UniVS_PropagateMasks", 2),
             Node("legend", "UniVS_TracksLegend", 2), Node("legend_view", "PreviewAny", 2, size=(360, 260)),
             Node("mov", "UniVS_ExportMatte", 3, {"format": "prores4444_mov", "mode": "per_object",
                                                  "filename_prefix": "univs/long_clip"}),
             Node("png", "UniVS_ExportMatte", 3, {"format": "png8", "filename_prefix": "univs/long_clip_png"})]
    links = [("video", "VIDEO", "track", "video"), ("model", "model", "track", "model"),
             ("target", "prompts", "track", "prompts"), ("track", "tracks", "mov", "tracks"),
             ("video", "VIDEO", "mov", "video"), ("track", "tracks", "png", "tracks"),
             ("track", "tracks", "legend", "tracks"), ("legend", "legend", "legend_view", "source")]
    return build("UniVS: long clip streamed with bounded memory", note, nodes, links, info)


TEMPLATES = {
    "UniVS - Text to roto matte": text_to_roto,
    "UniVS - Clicks on two objects with a correction": clicks_two_objects,
    "UniVS - Panoptic video with legend": panoptic,
    "UniVS - Long clip streamed with bounded memory": long_clip,
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--server", default="http://127.0.0.1:8188", help="a running ComfyUI with this pack loaded")
    args = ap.parse_args()
    info = fetch_object_info(args.server)
    for title, make in TEMPLATES.items():
        path = OUT / f"{title}.json"
        path.write_text(json.dumps(make(info), indent=1) + "\n")
        print("wrote", path.relative_to(ROOT))


if __name__ == "__main__":
    main()
