"""Write the pack's templates (workflows/*.json, ComfyUI's UI format) from short descriptions.

Node slots and widget order come from a running ComfyUI's /object_info, so every link matches the schemas; nodes
are laid out in columns with sizes taken from the node's content, so no two nodes overlap (tests check both).
The file name is what ComfyUI's template browser shows as a pack template's title.

Templates that need model files the pack does not ship (the Wan VACE / VOID chains) carry
``extra.univs_ci = "validate-only"``: CI type-checks them against /object_info but does not run them, and their
loaders carry ``properties.models`` (file, download URL, models folder), which ComfyUI's missing-model dialog reads.

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
DYNAMIC_COMBO = "COMFY_DYNAMICCOMBO_V3"  # a combo whose chosen option adds more widgets (core SaveVideo's format)
VALIDATE_ONLY = "validate-only"  # extra.univs_ci of a template CI type-checks but cannot run (models not shipped)
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
    models: list[dict] = field(default_factory=list)  # properties.models: {name, url, directory} per file


def fetch_object_info(server: str) -> dict:
    with urllib.request.urlopen(server.rstrip("/") + "/object_info", timeout=60) as r:
        return json.load(r)


def _opts(spec) -> dict:
    return spec[1] if len(spec) > 1 and isinstance(spec[1], dict) else {}


def _is_widget(spec) -> bool:
    typ = spec[0]
    return (isinstance(typ, list) or typ in WIDGET_TYPES or typ == DYNAMIC_COMBO) and not _opts(spec).get("forceInput")


def _ordered(info: dict):
    """(name, spec) of every input in the schema's order (required first); hidden ones (never shown nor saved by
    the editor, e.g. SaveVideo's legacy top-level codec) are left out."""
    order = info.get("input_order") or {k: list(v) for k, v in info["input"].items()}
    for section in ("required", "optional"):
        for name in order.get(section, []):
            spec = info["input"][section][name]
            if not _opts(spec).get("hidden"):
                yield name, spec


def _widget_values(inputs: dict, values: dict, prefix: str = "") -> list:
    """widgets_values as the editor saves them: one value per widget in schema order, plus the UI-only value that
    follows a seed (control_after_generate) or an upload combo; a dynamic combo is followed by the widgets of its
    chosen option (named `combo.widget` in `values`)."""
    out = []
    for name, spec in _ordered(inputs):
        if not _is_widget(spec):
            continue
        full = prefix + name
        value = values[full] if full in values else _default(spec)
        out.append(value)
        opts = _opts(spec)
        if spec[0] == DYNAMIC_COMBO:
            chosen = next(o for o in opts["options"] if o["key"] == value)
            out += _widget_values({"input": chosen.get("inputs") or {}}, values, full + ".")
            continue
        if opts.get("control_after_generate"):
            out.append("fixed")  # the seed widget's "control after generate" setting
        if any(opts.get(f) for f in UPLOAD_FLAGS):
            out.append("image")  # the upload button's own (unused) widget value
    return out


def _widget_names(inputs: dict, prefix: str = "") -> set[str]:
    names = set()
    for name, spec in _ordered(inputs):
        if _is_widget(spec):
            names.add(prefix + name)
            if spec[0] == DYNAMIC_COMBO:
                for o in _opts(spec)["options"]:
                    names |= _widget_names({"input": o.get("inputs") or {}}, prefix + name + ".")
    return names


def _default(spec):
    typ, opts = spec[0], _opts(spec)
    if "default" in opts:
        return opts["default"]
    choices = typ if isinstance(typ, list) else opts.get("options") if typ == "COMBO" else None
    if choices is not None:
        if not choices:
            raise ValueError(f"a combo without options (no model files on this server?) needs a value: {spec}")
        return choices[0]
    if typ == DYNAMIC_COMBO:
        return opts["options"][0]["key"]
    return {"INT": 0, "FLOAT": 0.0, "STRING": "", "BOOLEAN": False}[typ]


def _estimate_size(info: dict, node: Node) -> tuple[int, int]:
    """Width/height of the node body: one row per socket pair, one per widget (multiline text gets four; a dynamic
    combo also gets a row per widget of its chosen option)."""
    if node.size:
        return node.size
    sockets = sum(1 for _, s in _ordered(info) if not _is_widget(s))
    rows = max(sockets, len(info["output"]))
    widget_h = 0
    for name, spec in _ordered(info):
        if _is_widget(spec):
            widget_h += 110 if _opts(spec).get("multiline") else 28
            if spec[0] == DYNAMIC_COMBO:  # the chosen option's own widgets
                value = node.widgets[name] if name in node.widgets else _default(spec)
                chosen = next(o for o in _opts(spec)["options"] if o["key"] == value)
                widget_h += 28 * len(_widget_values({"input": chosen.get("inputs") or {}}, node.widgets, name + "."))
    return 360, 24 * rows + widget_h + 24


def ui_node(n: Node, node_id: int, pos, size, nd: dict, in_links: dict[str, int],
            out_links: dict[str, list[int]]) -> dict:
    """One UI-format node of type `n.type` with schema `nd` (from /object_info): its widget values (n.widgets over
    the schema defaults), its sockets (every non-widget input; a widget input only where a link feeds it) and the
    link ids on them (`in_links`: input name -> link id, `out_links`: output name -> link ids)."""
    inputs = []
    for in_name, spec in _ordered(nd):
        typ = spec[0] if isinstance(spec[0], str) else "COMBO"
        link = in_links.get(in_name)
        if _is_widget(spec):
            if link is not None:
                inputs.append({"name": in_name, "type": typ, "widget": {"name": in_name}, "link": link})
        else:
            inputs.append({"name": in_name, "type": typ, "link": link})
    unknown = (set(n.widgets) - _widget_names(nd)) | (set(in_links) - {k for k, _ in _ordered(nd)})
    if unknown:
        raise ValueError(f"{n.type} has no input {sorted(unknown)}")
    outputs = []
    for slot, (typ, out_name) in enumerate(zip(nd["output"], nd["output_name"])):
        outputs.append({"name": out_name, "type": typ if isinstance(typ, str) else "COMBO",
                        "links": list(out_links.get(out_name, [])), "slot_index": slot})
    unknown = set(out_links) - set(nd["output_name"])
    if unknown:
        raise ValueError(f"{n.type} has no output {sorted(unknown)}")
    node = {"id": node_id, "type": n.type, "pos": list(pos), "size": list(size), "flags": {},
            "order": node_id - 1, "mode": 0, "inputs": inputs, "outputs": outputs,
            "properties": {"Node name for S&R": n.type}, "widgets_values": _widget_values(nd, n.widgets)}
    if n.type.startswith("UniVS_"):
        node["properties"]["cnr_id"] = "comfyui-univs"
    if n.models:
        node["properties"]["models"] = [dict(m) for m in n.models]
    if n.title:
        node["title"] = n.title
    return node


def note_node(node_id: int, pos, size, text: str) -> dict:
    """A MarkdownNote (a frontend-only node: not in /object_info)."""
    return {"id": node_id, "type": "MarkdownNote", "pos": list(pos), "size": list(size), "flags": {},
            "order": node_id - 1, "mode": 0, "inputs": [], "outputs": [], "properties": {},
            "widgets_values": [text], "color": "#432", "bgcolor": "#653"}


def build(name: str, note: str, nodes: list[Node], links: list[tuple[str, str, str, str]], info: dict,
          note_size=(640, 260), note_head: str = NOTE_HEAD, ci: str | None = None, ci_check: str | None = None) -> dict:
    """UI-format workflow: a note, then `nodes` in columns, wired by (src, output, dst, input) names.
    `ci` = VALIDATE_ONLY marks a template CI cannot run (extra.univs_ci); `ci_check` names an extra check CI makes
    of its output (extra.univs_ci_check, see .ci/comfyui_e2e.sh)."""
    nodes = [Node("note", "MarkdownNote", 0, {"text": note_head + note}, note_size)] + nodes
    ids = {n.key: i + 1 for i, n in enumerate(nodes)}
    keys = set(ids)
    for src, _, dst, _ in links:
        if src not in keys or dst not in keys:
            raise ValueError(f"{name}: link {src} -> {dst} names a node that is not in the template")
    wired = [(k, src, out_name, dst, in_name) for k, (src, out_name, dst, in_name) in enumerate(links, start=1)]
    positions = _layout(nodes, info)
    out_nodes = []
    for n in nodes:
        pos, size = positions[n.key]
        if n.type == "MarkdownNote":
            out_nodes.append(note_node(ids[n.key], pos, size, n.widgets["text"]))
            continue
        in_links = {w[4]: w[0] for w in wired if w[3] == n.key}
        out_links: dict[str, list[int]] = {}
        for w in wired:
            if w[1] == n.key:
                out_links.setdefault(w[2], []).append(w[0])
        try:
            out_nodes.append(ui_node(n, ids[n.key], pos, size, info[n.type], in_links, out_links))
        except ValueError as e:
            raise ValueError(f"{name}: {e}") from None
    link_rows = []
    for k, src, out_name, dst, in_name in wired:
        src_slot = info[_type(nodes, src)]["output_name"].index(out_name)
        dst_node = next(x for x in out_nodes if x["id"] == ids[dst])
        dst_slot = next(i for i, x in enumerate(dst_node["inputs"]) if x["name"] == in_name)
        typ = dst_node["inputs"][dst_slot]["type"]
        src_typ = info[_type(nodes, src)]["output"][src_slot]
        link_rows.append([k, ids[src], src_slot, ids[dst], dst_slot, src_typ if isinstance(src_typ, str) else typ])
    extra = {"ds": {"scale": 0.7, "offset": [40, 320]}, "info": {"name": name}}
    if ci:
        extra["univs_ci"] = ci
    if ci_check:
        extra["univs_ci_check"] = ci_check
    return {"last_node_id": len(nodes), "last_link_id": len(links), "nodes": out_nodes, "links": link_rows,
            "groups": [], "config": {}, "extra": extra, "version": 0.4}


def _type(nodes: list[Node], key: str) -> str:
    return next(n.type for n in nodes if n.key == key)


def _layout(nodes: list[Node], info: dict, x0: int = 0) -> dict[str, tuple[tuple[int, int], tuple[int, int]]]:
    """Columns left to right from x0; the note (if any) sits above column 0. Returns key -> (pos, size)."""
    sizes = {n.key: n.size or _estimate_size(info[n.type], n) for n in nodes}
    cols = sorted({n.col for n in nodes if n.key != "note"})
    x, out = x0, {}
    if "note" in sizes:
        note = sizes["note"]
        out["note"] = ((x0, -note[1] - TITLE_H - GAP_Y), note)
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


CROSS_BOX = {"version": 1, "objects": [{"id": 1, "label": "cross", "frames": {
    "0": {"points": [[84, 83, 1]], "box": [50, 49, 119, 118]}}}]}  # a click and a box on the sample's cross, frame 0
BACKGROUND_COLOUR = 0xF0C850  # the new background of "Replace the background" (CI checks its output frames for it)
COMPOSITE_CHECK = "composite-over-colour"  # CI: .ci/check_composite_output.py on the saved video


def replace_background(info):
    note = ("**Replace the background, no generative model.** *Prompt Target* holds a click and a box on the object "
            "to keep (the cross, frame 0; queue once to see the frames in its editor and click your own object, or "
            "use *Text Refer* instead); UniVS tracks it; *Tracks to Mask* (feather = soft edge) and *Grow Mask* make "
            "the matte (*Feather Mask* would only fade the frame borders); "
            "*Image Composite Masked* puts the original pixels inside the matte over a new background, which is a "
            "solid colour from *Empty Image* (its size and frame count come from *Get Image Size*, so it fits any "
            "clip; pick the colour in *color*). For a picture instead: *Load Image* -> *Upscale Image* to the "
            "clip's size -> *Repeat Image Batch* (amount = batch_size) into `destination`. *Create Video* keeps "
            "the clip's frame rate; the result is in `output/univs/`.")
    nodes = [*_frames(0), _model(0),
             Node("target", "UniVS_PromptTarget", 1, {"label": "cross", "object_id": 1, "editor": json.dumps(CROSS_BOX)},
                  (460, 560)),
             Node("track", "UniVS_PropagateMasks", 1),
             Node("mask", "UniVS_TracksToMask", 2, {"select": "cross", "feather": 1.0}),
             Node("grow", "GrowMask", 2, {"expand": 2, "tapered_corners": True}),
             Node("mask_view", "MaskPreview", 2, size=PREVIEW),
             Node("size", "GetImageSize", 3),
             Node("background", "EmptyImage", 3, {"color": BACKGROUND_COLOUR}, title="New background (solid colour)"),
             Node("composite", "ImageCompositeMasked", 4),
             Node("make_video", "CreateVideo", 4),
             Node("save", "SaveVideo", 4, {"filename_prefix": "univs/background_replaced"}, (400, 420))]
    links = [("video", "VIDEO", "comp", "video"), ("comp", "images", "track", "images"),
             ("comp", "fps", "track", "fps"), ("model", "model", "track", "model"),
             ("target", "prompts", "track", "prompts"), ("comp", "images", "target", "image"),
             ("track", "tracks", "mask", "tracks"),
             ("mask", "masks", "grow", "mask"), ("grow", "MASK", "mask_view", "mask"),
             ("comp", "images", "size", "image"), ("size", "width", "background", "width"),
             ("size", "height", "background", "height"), ("size", "batch_size", "background", "batch_size"),
             ("background", "IMAGE", "composite", "destination"), ("comp", "images", "composite", "source"),
             ("grow", "MASK", "composite", "mask"), ("composite", "IMAGE", "make_video", "images"),
             ("comp", "fps", "make_video", "fps"), ("make_video", "VIDEO", "save", "video")]
    return build("UniVS: replace the background", note, nodes, links, info, ci_check=COMPOSITE_CHECK)


# Model files of the generative chains: (node key, file, download URL, ComfyUI models folder). The URLs are the
# ones core ComfyUI's own templates (video_wan_vace_inpainting, utility_void_video_inpainting) link to.
HF_WAN = "https://huggingface.co/Comfy-Org/Wan_2.1_ComfyUI_repackaged/resolve/main/split_files"
HF_VOID = "https://huggingface.co/Comfy-Org/void-model/resolve/main"
WAN_VACE_FILES = [
    ("unet", "wan2.1_vace_14B_fp16.safetensors", f"{HF_WAN}/diffusion_models/wan2.1_vace_14B_fp16.safetensors",
     "diffusion_models"),
    ("clip", "umt5_xxl_fp8_e4m3fn_scaled.safetensors",
     f"{HF_WAN}/text_encoders/umt5_xxl_fp8_e4m3fn_scaled.safetensors", "text_encoders"),
    ("vae", "wan_2.1_vae.safetensors", f"{HF_WAN}/vae/wan_2.1_vae.safetensors", "vae"),
]
VOID_FILES = [
    ("unet", "void_pass1.safetensors", f"{HF_VOID}/diffusion_models/void_pass1.safetensors", "diffusion_models"),
    ("clip", "t5xxl_fp16.safetensors",
     "https://huggingface.co/comfyanonymous/flux_text_encoders/resolve/main/t5xxl_fp16.safetensors", "text_encoders"),
    ("vae", "cogvideox_vae.safetensors", f"{HF_VOID}/vae/cogvideox_vae.safetensors", "vae"),
]


def _model_note(title: str, files) -> str:
    """The note's head for a template that needs model files: what runs without them, and where each file goes."""
    rows = "\n".join(f"| `{name}` | `ComfyUI/models/{folder}/` | [download]({url}) |" for _, name, url, folder in files)
    return (f"## UniVS masks -> {title}\n"
            "The UniVS part (tracking, masks) runs with the built-in model **univs_small (built-in)** on the sample "
            "clip `univs_sample.mp4`, which the pack copies into ComfyUI's `input/` folder. The generative part needs "
            "these model files (not shipped with the pack; about the sizes ComfyUI's own template asks for):\n\n"
            "| file | put it in | |\n| --- | --- | --- |\n" + rows + "\n\n"
            "Then pick them in the loaders (press `r` to refresh the lists). UniVS official checkpoints: UniVS "
            "Model_zoo on GitHub (MinghanLi/UniVS), into `ComfyUI/models/univs/`.\n\n")


def _loader_models(files) -> dict[str, list[dict]]:
    return {key: [{"name": name, "url": url, "directory": folder}] for key, name, url, folder in files}


def wan_vace_remove(info):
    note = ("**Remove an object with Wan 2.1 VACE** (built like ComfyUI's `video_wan_vace_inpainting`, with UniVS "
            "masks instead of SAM3). *Text Refer* names what to remove; UniVS tracks it through the clip; *Grow Mask* "
            "widens the mask so the edges are repainted too. The control video is the clip with the masked area "
            "blanked (*Invert Mask* -> *Convert Mask to Image* -> *Image Composite Masked*); VACE repaints that area "
            "from the prompt, which describes the scene **without** the object. The clip is cut to its first 81 "
            "frames (*First 81 frames*, VACE's native length) and scaled to about 0.38 megapixels with sides a "
            "multiple of 16 (*Scale Image to Total Pixels*: Wan's 480p). Check the masked control video in the preview before the long sampling run. For smaller "
            "GPUs use `wan2.1_vace_1.3B_fp16.safetensors` (same folder).")
    models = _loader_models(WAN_VACE_FILES)
    nodes = [*_frames(0), _model(0),
             Node("first", "ImageFromBatch", 1, {"batch_index": 0, "length": 81}, title="First 81 frames"),
             Node("scale", "ImageScaleToTotalPixels", 1, {"upscale_method": "lanczos", "megapixels": 0.38,
                                                          "resolution_steps": 16}),
             Node("text", "UniVS_TextRefer", 2, {"expressions": "cross: the cross moving down"}),
             Node("track", "UniVS_PropagateMasks", 2),
             Node("mask", "UniVS_TracksToMask", 3, {"select": "cross"}),
             Node("grow", "GrowMask", 3, {"expand": 8, "tapered_corners": True}),
             Node("invert", "InvertMask", 3),
             Node("to_image", "MaskToImage", 3),
             Node("control", "ImageCompositeMasked", 4, title="Control video (object blanked)"),
             Node("control_view", "PreviewImage", 4, size=PREVIEW),
             Node("size", "GetImageSize", 4),
             Node("unet", "UNETLoader", 5, {"unet_name": WAN_VACE_FILES[0][1], "weight_dtype": "fp8_e4m3fn_fast"},
                  models=models["unet"]),
             Node("clip", "CLIPLoader", 5, {"clip_name": WAN_VACE_FILES[1][1], "type": "wan"}, models=models["clip"]),
             Node("vae", "VAELoader", 5, {"vae_name": WAN_VACE_FILES[2][1]}, models=models["vae"]),
             Node("shift", "ModelSamplingSD3", 5, {"shift": 5.0}),
             Node("positive", "CLIPTextEncode", 6, {"text": "a brick wall, rippling blue water and green grass under a "
                                                           "blue sky with white clouds, steady camera"},
                  (400, 200), title="Prompt: the scene without the object"),
             Node("negative", "CLIPTextEncode", 6, {"text": "blurry, smeared, flicker, artifacts, watermark, subtitles, "
                                                           "static frame, the removed object"},
                  (400, 200), title="Negative prompt"),
             Node("vace", "WanVaceToVideo", 7, {"strength": 1.0}),
             Node("sampler", "KSampler", 7, {"seed": 42, "steps": 20, "cfg": 6.0, "sampler_name": "uni_pc",
                                             "scheduler": "simple"}),
             Node("trim", "TrimVideoLatent", 8),
             Node("decode", "VAEDecode", 8),
             Node("make_video", "CreateVideo", 8),
             Node("save", "SaveVideo", 8, {"filename_prefix": "univs/wan_vace_removed"}, (400, 420))]
    links = [("video", "VIDEO", "comp", "video"), ("comp", "images", "first", "image"),
             ("first", "IMAGE", "scale", "image"), ("scale", "IMAGE", "track", "images"),
             ("comp", "fps", "track", "fps"), ("model", "model", "track", "model"),
             ("text", "prompts", "track", "prompts"), ("track", "tracks", "mask", "tracks"),
             ("mask", "masks", "grow", "mask"), ("grow", "MASK", "invert", "mask"),
             ("invert", "MASK", "to_image", "mask"), ("scale", "IMAGE", "control", "destination"),
             ("to_image", "IMAGE", "control", "source"), ("grow", "MASK", "control", "mask"),
             ("control", "IMAGE", "control_view", "images"), ("scale", "IMAGE", "size", "image"),
             ("unet", "MODEL", "shift", "model"), ("clip", "CLIP", "positive", "clip"),
             ("clip", "CLIP", "negative", "clip"), ("positive", "CONDITIONING", "vace", "positive"),
             ("negative", "CONDITIONING", "vace", "negative"), ("vae", "VAE", "vace", "vae"),
             ("size", "width", "vace", "width"), ("size", "height", "vace", "height"),
             ("size", "batch_size", "vace", "length"), ("control", "IMAGE", "vace", "control_video"),
             ("grow", "MASK", "vace", "control_masks"), ("shift", "MODEL", "sampler", "model"),
             ("vace", "positive", "sampler", "positive"), ("vace", "negative", "sampler", "negative"),
             ("vace", "latent", "sampler", "latent_image"), ("sampler", "LATENT", "trim", "samples"),
             ("vace", "trim_latent", "trim", "trim_amount"), ("trim", "LATENT", "decode", "samples"),
             ("vae", "VAE", "decode", "vae"), ("decode", "IMAGE", "make_video", "images"),
             ("comp", "fps", "make_video", "fps"), ("make_video", "VIDEO", "save", "video")]
    return build("UniVS: object removal (Wan VACE)", note, nodes, links, info, note_size=(760, 420),
                 note_head=_model_note("Wan 2.1 VACE video inpainting", WAN_VACE_FILES), ci=VALIDATE_ONLY)


def void_erase(info):
    note = ("**Erase an object and what it does to the scene with VOID** (Netflix VOID on CogVideoX, core nodes; "
            "built like pass 1 of ComfyUI's `utility_void_video_inpainting`, with UniVS masks instead of SAM3). "
            "VOID fills the masked area as if the object had never been there, shadows and reflections included, "
            "so grow the mask generously. The mask goes in as VOID's quadmask (1 = remove). The prompt describes "
            "the scene **after** the removal. The clip is cut to its first 45 frames (VOID's native length) and "
            "VOID works at 672x384 (center crop). ComfyUI's own VOID template adds a second, optical-flow refined "
            "pass (`void_pass2.safetensors` + a RAFT flow model) for steadier results.")
    models = _loader_models(VOID_FILES)
    nodes = [*_frames(0), _model(0),
             Node("first", "ImageFromBatch", 1, {"batch_index": 0, "length": 45}, title="First 45 frames"),
             Node("text", "UniVS_TextRefer", 1, {"expressions": "cross: the cross moving down"}),
             Node("track", "UniVS_PropagateMasks", 1),
             Node("mask", "UniVS_TracksToMask", 2, {"select": "cross"}),
             Node("grow", "GrowMask", 2, {"expand": 12, "tapered_corners": True}),
             Node("mask_view", "MaskPreview", 2, size=PREVIEW),
             Node("unet", "UNETLoader", 3, {"unet_name": VOID_FILES[0][1]}, models=models["unet"]),
             Node("clip", "CLIPLoader", 3, {"clip_name": VOID_FILES[1][1], "type": "cogvideox"},
                  models=models["clip"]),
             Node("vae", "VAELoader", 3, {"vae_name": VOID_FILES[2][1]}, models=models["vae"]),
             Node("size", "GetImageSize", 3),
             Node("positive", "CLIPTextEncode", 4, {"text": "a brick wall, rippling blue water and green grass under a "
                                                           "blue sky with white clouds"},
                  (400, 200), title="Prompt: the scene after the removal"),
             Node("negative", "CLIPTextEncode", 4, {"text": ""}, (400, 200), title="Negative prompt"),
             Node("condition", "VOIDInpaintConditioning", 5, {"width": 672, "height": 384}),
             Node("noise", "RandomNoise", 5, {"noise_seed": 42}),
             Node("guider", "CFGGuider", 5, {"cfg": 6.0}),
             Node("schedule", "BasicScheduler", 6, {"scheduler": "simple", "steps": 30, "denoise": 1.0}),
             Node("void_sampler", "VOIDSampler", 6),
             Node("sample", "SamplerCustomAdvanced", 6),
             Node("decode", "VAEDecode", 7),
             Node("make_video", "CreateVideo", 7),
             Node("save", "SaveVideo", 7, {"filename_prefix": "univs/void_erased"}, (400, 420))]
    links = [("video", "VIDEO", "comp", "video"), ("comp", "images", "first", "image"),
             ("first", "IMAGE", "track", "images"), ("comp", "fps", "track", "fps"),
             ("model", "model", "track", "model"), ("text", "prompts", "track", "prompts"),
             ("track", "tracks", "mask", "tracks"), ("mask", "masks", "grow", "mask"),
             ("grow", "MASK", "mask_view", "mask"), ("first", "IMAGE", "size", "image"),
             ("clip", "CLIP", "positive", "clip"), ("clip", "CLIP", "negative", "clip"),
             ("positive", "CONDITIONING", "condition", "positive"),
             ("negative", "CONDITIONING", "condition", "negative"), ("vae", "VAE", "condition", "vae"),
             ("first", "IMAGE", "condition", "video"), ("grow", "MASK", "condition", "quadmask"),
             ("size", "batch_size", "condition", "length"), ("unet", "MODEL", "guider", "model"),
             ("condition", "positive", "guider", "positive"), ("condition", "negative", "guider", "negative"),
             ("unet", "MODEL", "schedule", "model"), ("noise", "NOISE", "sample", "noise"),
             ("guider", "GUIDER", "sample", "guider"), ("void_sampler", "SAMPLER", "sample", "sampler"),
             ("schedule", "SIGMAS", "sample", "sigmas"), ("condition", "latent", "sample", "latent_image"),
             ("sample", "output", "decode", "samples"), ("vae", "VAE", "decode", "vae"),
             ("decode", "IMAGE", "make_video", "images"), ("comp", "fps", "make_video", "fps"),
             ("make_video", "VIDEO", "save", "video")]
    return build("UniVS: object removal (VOID)", note, nodes, links, info, note_size=(760, 420),
                 note_head=_model_note("VOID video inpainting (CogVideoX)", VOID_FILES), ci=VALIDATE_ONLY)


TEMPLATES = {
    "UniVS - Text to roto matte": text_to_roto,
    "UniVS - Clicks on two objects with a correction": clicks_two_objects,
    "UniVS - Panoptic video with legend": panoptic,
    "UniVS - Long clip streamed with bounded memory": long_clip,
    "UniVS - Replace the background": replace_background,
    # short enough for the template browser's cards (about 264 px of 14 px Inter at frontend 1.49.6)
    "UniVS - Object removal (Wan VACE)": wan_vace_remove,
    "UniVS - Object removal (VOID)": void_erase,
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
