"""UniVS nodes for ComfyUI (V3 schema, ``comfy_api.latest``).

Each node declares its schema and calls plain functions (convert / prompts / select / export / runtime) and the
engine (``univs_engine.api``). Only this module imports ComfyUI.
"""
from __future__ import annotations

import logging
import os
from typing import Any

import numpy as np
import torch
from typing_extensions import override

import comfy.model_management as mm
import comfy.utils
import folder_paths
from comfy_api.latest import ComfyExtension, io
from univs_engine.vocabularies import vocabulary_names

from . import convert, export, prompts as P, runtime, select as S

try:
    import comfy.model_patcher as _model_patcher
except Exception:  # pragma: no cover - very old ComfyUI
    _model_patcher = None

log = logging.getLogger("univs")

CATEGORY = "segmentation/UniVS"
ALIASES = ["univs", "roto", "rotoscope", "matte", "track", "video segmentation", "segment", "mask"]

UniVSModelType = io.Custom("UNIVS_MODEL")
UniVSPrompts = io.Custom("UNIVS_PROMPTS")
UniVSTracks = io.Custom("UNIVS_TRACKS")

MODEL_DOCS_URL = "https://github.com/MinghanLi/UniVS/blob/main/Model_zoo.md"

runtime.register_model_folder(folder_paths)
SAMPLE_VIDEO = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "assets", "sample.mp4")
if runtime.place_sample_video(SAMPLE_VIDEO, folder_paths.get_input_directory()) is None:
    log.warning("UniVS: could not copy the sample clip into %s; the templates' Load Video needs %s there",
                folder_paths.get_input_directory(), runtime.SAMPLE_NAME)


# =============================================================================================== shared helpers
def _intermediate(t: torch.Tensor) -> torch.Tensor:
    try:
        return t.to(mm.intermediate_device())
    except Exception:
        return t


def _open_frames(images: Any, video: Any, fps: float | None = None):
    """IMAGE batch or core VIDEO -> (univs_engine VideoSource, temp path to delete or None)."""
    from univs_engine.io.video import VideoSource

    if images is None and video is None:
        raise ValueError("images / video: connect the video frames (an IMAGE batch or a VIDEO from LoadVideo)")
    if images is not None and video is not None:
        raise ValueError("images / video: connect only one of them (IMAGE batch or VIDEO)")
    if images is not None:
        return convert.image_batch_source(images, "images", fps=fps or 24.0), None
    path, temporary = runtime.video_to_path(video, folder_paths.get_temp_directory())
    try:
        rate = float(video.get_frame_rate()) if hasattr(video, "get_frame_rate") else None
    except Exception:
        rate = None
    try:
        return VideoSource(path, fps=rate), (path if temporary else None)
    except Exception:
        if temporary and os.path.exists(path):
            os.remove(path)
        raise


def _close(source: Any, temp: str | None) -> None:
    try:
        source.close()
    except Exception:
        pass
    if temp and os.path.exists(temp):
        try:
            os.remove(temp)
        except OSError:
            pass


def _run_engine(fn, handle: runtime.UniVSHandle, total: int, **kwargs):
    """Call the engine with ComfyUI progress + cancel, and map the engine's Cancelled onto an interrupt."""
    from univs_engine.api import Cancelled

    pbar = comfy.utils.ProgressBar(max(1, total))
    model = handle.prepare(mm)
    try:
        return fn(model, progress=runtime.make_progress(pbar), cancel=runtime.make_cancel(mm), **kwargs)
    except Cancelled:
        mm.throw_exception_if_processing_interrupted()
        raise
    finally:
        handle.release(mm)


def _check_handle(model: Any) -> runtime.UniVSHandle:
    if not isinstance(model, runtime.UniVSHandle):
        raise ValueError(f"model: expected UNIVS_MODEL from 'Load UniVS Model', got {type(model).__name__}")
    return model


def _fps_input():
    return io.Float.Input("fps", default=0.0, min=0.0, max=240.0, step=0.001,
                          tooltip="Frame rate of an IMAGE batch (connect GetVideoComponents' fps) so exports play "
                                  "at the video's speed; 0 = the VIDEO's own rate, or unknown.")


def _source_fps(fps: float, video: Any, source: Any) -> float | None:
    """The frame rate the tracks carry: the fps input, else a VIDEO's own rate; None for an IMAGE batch without it."""
    if fps:
        return float(fps)
    return float(source.fps) if video is not None else None


def _range_inputs():
    return [
        io.Int.Input("start_frame", default=0, min=0, max=10_000_000, tooltip="First frame (0-based)."),
        io.Int.Input("end_frame", default=-1, min=-1, max=10_000_000,
                     tooltip="Last frame, inclusive; -1 = the last frame of the video."),
    ]


def _intermediate_output_flag() -> dict[str, Any]:
    """``has_intermediate_output`` keeps the editor's frames across a page refresh (ComfyUI >= 0.18)."""
    import dataclasses

    names = {f.name for f in dataclasses.fields(io.Schema)} if dataclasses.is_dataclass(io.Schema) else set()
    return {"has_intermediate_output": True} if "has_intermediate_output" in names else {}


# =============================================================================================== loader
class LoadUniVS(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        files = runtime.model_file_options(folder_paths, builtin=True)
        extra = runtime.model_file_options(folder_paths, builtin=False, none=True)
        return io.Schema(
            node_id="UniVS_LoadModel",
            display_name="Load UniVS Model",
            category=CATEGORY,
            search_aliases=ALIASES + ["load univs", "univs loader"],
            description=(
                "Loads a UniVS video segmentation model. 'univs_small (built-in)' ships with the pack; official "
                "checkpoints (R50 / Swin-T/B/L) go into models/univs (or a 'univs:' entry of extra_model_paths.yaml). "
                f"Official weights: UniVS Model_zoo on GitHub (MinghanLi/UniVS), {MODEL_DOCS_URL}"
            ),
            inputs=[
                io.Combo.Input("checkpoint", options=files, default=runtime.BUILTIN_MODEL,
                               tooltip="Model weights: the built-in small model or a file from models/univs."),
                io.Combo.Input("precision", options=["auto", "fp32", "fp16", "bf16"], default="auto",
                               tooltip="auto = fp32 on CPU/MPS, bf16 on GPUs that support it, else fp32."),
                io.Combo.Input("device", options=["auto", "cpu", "gpu"], default="auto",
                               tooltip="auto = ComfyUI's device (respects --cpu); cpu forces the CPU."),
                io.Combo.Input("text_encoder", options=extra, default=runtime.NONE_OPTION, advanced=True,
                               tooltip="Official checkpoints only: the CLIP RN50x4 text-encoder file, needed for "
                                       "TextRefer and typed vocabularies. The built-in model has its own."),
                io.Combo.Input("class_embeddings", options=extra, default=runtime.NONE_OPTION, advanced=True,
                               tooltip="Official checkpoints only: the category-embedding file for built-in "
                                       "vocabularies without a text encoder."),
                io.Boolean.Input("offload_after_run", default=False, advanced=True,
                                 tooltip="Move the model off the GPU after every run (saves VRAM, costs reload time)."),
                io.Boolean.Input("compile", default=False, advanced=True, optional=True,
                                 tooltip="torch.compile the model (CUDA graphs on a GPU): the first run of each video "
                                         "size compiles for minutes, later runs are faster. Not yet measured on a "
                                         "GPU; off by default."),
            ],
            outputs=[UniVSModelType.Output("model", tooltip="The loaded UniVS model.")],
        )

    @classmethod
    def execute(cls, checkpoint, precision="auto", device="auto", text_encoder=runtime.NONE_OPTION,
                class_embeddings=runtime.NONE_OPTION, offload_after_run=False, compile=False) -> io.NodeOutput:
        from univs_engine import compiled
        from univs_engine.api import load_model

        ckpt = runtime.resolve_model_file(folder_paths, checkpoint, "checkpoint")
        if ckpt is None:
            raise ValueError("checkpoint: choose a model file")
        if ckpt != "small":
            ckpt = runtime.converted_checkpoint(ckpt)
        te = runtime.resolve_model_file(folder_paths, text_encoder, "text_encoder")
        ce = runtime.resolve_model_file(folder_paths, class_embeddings, "class_embeddings")
        dev = runtime.resolve_device(device, mm)
        dtype = runtime.resolve_precision(precision, dev, mm)
        try:
            model = load_model(checkpoint=ckpt, text_encoder=None if ckpt == "small" else te,
                               class_embeddings=None if ckpt == "small" else ce, device="cpu", dtype=dtype)
        except FileNotFoundError as e:
            raise ValueError(f"checkpoint: {e}") from e
        if compile:  # lazily: each stage compiles on its first call, on the device the patcher moves it to
            compiled.compile_model(model.net, compiled.mode_for(dev))
        patcher = runtime.wrap_model(model, dev, _model_patcher, mm)
        handle = runtime.UniVSHandle(model=model, patcher=patcher, name=checkpoint, device=dev, dtype=dtype,
                                     offload_after_run=bool(offload_after_run),
                                     has_text_encoder=getattr(model, "text", None) is not None)
        return io.NodeOutput(handle)


# =============================================================================================== prompt builders
class PromptTarget(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="UniVS_PromptTarget",
            display_name="UniVS Prompt Target",
            category=CATEGORY,
            search_aliases=ALIASES + ["points", "clicks", "box", "prompt", "target", "object"],
            description=(
                "One object to track, from clicks, a box or a mask on any frame. Chain several nodes to add objects, "
                "or repeat an object id on a later frame to correct it there. Use the built-in editor (click = "
                "positive, right/shift-click = negative, drag = box) or connect KJNodes points JSON, core "
                "BOUNDING_BOX or BBOX."
            ),
            inputs=[
                io.Int.Input("frame_index", default=0, min=0, max=10_000_000,
                             tooltip="Frame the clicks/box/mask refer to (0-based)."),
                io.Int.Input("object_id", default=0, min=0, max=100_000,
                             tooltip="0 = a new object (next free id); an existing id adds a correction to that object."),
                io.String.Input("label", default="", tooltip="Optional name for the object (used by selectors and the legend)."),
                io.String.Input("editor", default="", multiline=False, advanced=True,
                                tooltip="Prompt-editor state (JSON, written by the editor canvas; saved with the workflow)."),
                io.String.Input("positive_coords", optional=True, force_input=True,
                                tooltip='Positive clicks as JSON [{"x": 10, "y": 20}, ...] in pixels (KJNodes PointsEditor / core format).'),
                io.String.Input("negative_coords", optional=True, force_input=True,
                                tooltip="Negative clicks, same JSON format."),
                io.MultiType.Input("bboxes", types=[io.BoundingBox, io.BBOX, io.String], optional=True,
                                   tooltip="Box(es): core BOUNDING_BOX, community BBOX (x0,y0,x1,y1) or JSON. Several "
                                           "boxes without clicks = one object per box."),
                io.Mask.Input("mask", optional=True,
                              tooltip="Initial mask of the object (one mask, or a per-frame batch from which frame_index is taken)."),
                UniVSPrompts.Input("prompts", optional=True, tooltip="Prompts from another UniVS prompt node (chaining)."),
                io.Image.Input("image", optional=True,
                               tooltip="Video frames to show in the prompt editor (queue once to load them)."),
            ],
            outputs=[UniVSPrompts.Output("prompts", tooltip="The chained prompt list.")],
            **_intermediate_output_flag(),
        )

    @classmethod
    def execute(cls, frame_index, object_id, label="", editor="", positive_coords=None, negative_coords=None,
                bboxes=None, mask=None, prompts=None, image=None) -> io.NodeOutput:
        out = P.build_target_prompts(frame_index=frame_index, object_id=object_id, label=label,
                                     positive_coords=positive_coords, negative_coords=negative_coords, bboxes=bboxes,
                                     mask=mask, editor_state=editor, previous=prompts)
        ui_out: dict[str, Any] = {"text": [P.describe_prompts(out)]}
        if image is not None:
            ui_out.update(runtime.editor_frames(image, folder_paths.get_temp_directory()))
        return io.NodeOutput(out, ui=ui_out)


class TextRefer(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="UniVS_TextRefer",
            display_name="UniVS Text Refer",
            category=CATEGORY,
            search_aliases=ALIASES + ["text", "referring", "refvos", "language", "expression"],
            description=(
                "Objects described in words: one referring expression per line = one object. Prefix 'label: ' to "
                "name it (e.g. 'dancer: the woman in the red dress'). Chainable with PromptTarget."
            ),
            inputs=[
                io.String.Input("expressions", multiline=True, default="the person on the left",
                                placeholder="one expression per line; optional 'label: expression'",
                                tooltip="One referring expression per line; 'label: expression' sets the object's label."),
                io.Int.Input("frame_hint", default=0, min=0, max=10_000_000,
                             tooltip="Frame where the described objects are clearly visible (propagation starts there)."),
                io.Int.Input("object_id", default=0, min=0, max=100_000,
                             tooltip="0 = next free ids; otherwise the id of the first line (then +1 per line)."),
                UniVSPrompts.Input("prompts", optional=True, tooltip="Prompts to chain onto."),
            ],
            outputs=[UniVSPrompts.Output("prompts")],
        )

    @classmethod
    def execute(cls, expressions, frame_hint=0, object_id=0, prompts=None) -> io.NodeOutput:
        out = P.build_text_prompts(expressions=expressions, frame_hint=frame_hint, object_id=object_id, previous=prompts)
        return io.NodeOutput(out, ui={"text": [P.describe_prompts(out)]})


# =============================================================================================== executors
class PropagateMasks(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="UniVS_PropagateMasks",
            display_name="UniVS Rotoscope: Track Objects",
            category=CATEGORY,
            search_aliases=ALIASES + ["propagate", "vos", "tracking", "sam2 video", "object tracking"],
            description=(
                "Tracks the prompted objects through the video (forward, backward or both from the prompt frames). "
                "A VIDEO input is decoded in windows, so long clips use bounded memory. The tracks are compact; "
                "'UniVS Tracks to Mask' turns them into MASK batches."
            ),
            inputs=[
                UniVSModelType.Input("model"),
                UniVSPrompts.Input("prompts", tooltip="From PromptTarget / TextRefer."),
                io.Image.Input("images", optional=True, tooltip="Video frames as an IMAGE batch."),
                io.Video.Input("video", optional=True, tooltip="Core VIDEO (LoadVideo): streamed, never fully decoded."),
                io.Combo.Input("direction", options=["both", "forward", "backward"], default="both",
                               tooltip="both = forward from the first prompt and backward from the last one."),
                *_range_inputs(),
                io.Combo.Input("preset", options=["auto", "vos", "pvos", "refvos"], default="auto", advanced=True,
                               tooltip="Inference settings: auto = refvos for text-only prompts, else vos."),
                _fps_input(),
                io.Combo.Input("prompt_mode", options=["auto", "official", "refine"], default="auto", advanced=True, optional=True,
                               tooltip="How boxes and clicks become prompts. official = the model's trained box / "
                                       "point encoders (a box or positive clicks alone); refine = the filled box or "
                                       "click disks refined into a mask by one model pass (also takes negative "
                                       "clicks); auto = official where it applies, else refine."),
            ],
            outputs=[UniVSTracks.Output("tracks", tooltip="All objects, compact; feed the UniVS selector/export nodes.")],
            # the weak-frame marks go back to the Prompt Target editors; replayed when the run is cached
            **_intermediate_output_flag(),
        )

    @classmethod
    def execute(cls, model, prompts, images=None, video=None, direction="both", start_frame=0, end_frame=-1,
                preset="auto", fps=0.0, prompt_mode="auto") -> io.NodeOutput:
        from univs_engine.api import RunOptions, track

        handle = _check_handle(model)
        source, temp = _open_frames(images, video)
        try:
            rng = S.frame_range(start_frame, end_frame, source.num_frames)
            eprompts = P.to_engine_prompts(prompts, num_frames=source.num_frames, height=source.height,
                                           width=source.width, start=rng.start, stop=rng.stop)
            if any(p.text for p in eprompts):
                if not handle.has_text_encoder:
                    raise ValueError("prompts: text prompts need a text encoder; load the built-in model or pick "
                                     "the official text_encoder file in 'Load UniVS Model'")
            total = len(rng) * (2 if direction == "both" else 1)
            options = RunOptions(rng.start, rng.stop, direction, preset, prompt_mode=prompt_mode)
            reuse = runtime.reuse_record(handle.model, images if images is not None else video)
            tracks = _run_engine(track, handle, total, video=source, prompts=eprompts, options=options, reuse=reuse)
            tracks.fps = _source_fps(fps, video, source)
        finally:
            _close(source, temp)
        # univs_weak: where a correction is most likely needed, shown on the Prompt Target editors' scrubbers
        weak = S.weak_report(tracks, S.WEAK_RATIO, rng)
        return io.NodeOutput(tracks, ui={"text": [_tracks_summary(tracks)], "univs_weak": [weak]})


def _tracks_summary(tracks) -> str:
    lines = [f"{tracks.num_frames} frames, {tracks.width}x{tracks.height}, {len(tracks.object_ids)} objects"]
    for row in tracks.legend()[:50]:
        hidden = "" if row.get("shown", True) else f", score {row['score']:.3f} below {tracks.min_score:g}: not drawn"
        lines.append(f"{row['id']}: {row['label'] or '-'} (frames {row['first_frame']}..{row['last_frame']}{hidden})")
    return "\n".join(lines)


class PanopticVideo(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        vocabs = ["model default"] + vocabulary_names() + ["custom"]
        return io.Schema(
            node_id="UniVS_PanopticVideo",
            display_name="UniVS Panoptic Video",
            category=CATEGORY,
            search_aliases=ALIASES + ["panoptic", "instance", "semantic", "vis", "vps", "vss", "classes", "legend"],
            description=(
                "Segments every object of the chosen classes with ids that stay stable through the video "
                "(instance / semantic / panoptic). Outputs the tracks and a JSON legend; 'UniVS Overlay Preview' "
                "draws them (opacity 1 without frames = a colour id map)."
            ),
            inputs=[
                UniVSModelType.Input("model"),
                io.Image.Input("images", optional=True, tooltip="Video frames as an IMAGE batch."),
                io.Video.Input("video", optional=True, tooltip="Core VIDEO (LoadVideo), streamed."),
                io.Combo.Input("task", options=["panoptic", "instance", "semantic"], default="panoptic",
                               tooltip="panoptic = things + stuff; instance = things only; semantic = one segment per class."),
                io.Combo.Input("vocabulary", options=vocabs, default="model default",
                               tooltip="Class list: the model's own, a built-in dataset vocabulary, or 'custom'."),
                io.String.Input("custom_classes", multiline=True, default="",
                                placeholder="person, dog, car (used when vocabulary = custom)",
                                tooltip="Class names separated by commas or new lines (vocabulary = custom)."),
                *_range_inputs(),
                _fps_input(),
            ],
            outputs=[
                UniVSTracks.Output("tracks"),
                io.String.Output("legend", tooltip="JSON: id, label, colour, score, frames of every object; "
                                 "shown = false: below the task's score threshold, not drawn unless selected."),
            ],
        )

    @classmethod
    def execute(cls, model, images=None, video=None, task="panoptic", vocabulary="model default", custom_classes="",
                start_frame=0, end_frame=-1, fps=0.0) -> io.NodeOutput:
        from univs_engine.api import RunOptions, segment

        handle = _check_handle(model)
        vocab = None if vocabulary == "model default" else convert.parse_vocabulary(
            vocabulary, custom_classes, builtin=vocabulary_names())
        source, temp = _open_frames(images, video)
        try:
            rng = S.frame_range(start_frame, end_frame, source.num_frames)
            tracks = _run_engine(segment, handle, len(rng), video=source, task=task, vocabulary=vocab,
                                 options=RunOptions(rng.start, rng.stop))
            tracks.fps = _source_fps(fps, video, source)
        finally:
            _close(source, temp)
        return io.NodeOutput(tracks, S.legend_json(tracks), ui={"text": [_tracks_summary(tracks)]})


# =============================================================================================== cheap nodes
def _select_inputs(empty: str = "empty = the shown objects (score at or above the task's threshold; the legend's "
                                 "'shown')"):
    return io.String.Input("select", default="", tooltip="Objects: ids ('1, 3', '2-5') and/or labels ('person, car'), "
                                                         "which also pick objects below the score threshold; '!id' or "
                                                         f"'!label' excludes; {empty}.")


class TracksToMask(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="UniVS_TracksToMask",
            display_name="UniVS Tracks to Mask",
            category=CATEGORY,
            search_aliases=ALIASES + ["select object", "object mask", "mask list"],
            description=("Masks of the selected objects as MASK batches [T, H, W]: their union, or one MASK per object "
                         "(a list: downstream nodes run once per object). Never re-runs the model."),
            inputs=[
                UniVSTracks.Input("tracks"),
                _select_inputs(),
                *_range_inputs(),
                io.Int.Input("grow", default=0, min=-256, max=256, advanced=True,
                             tooltip="Grow (>0) or shrink (<0) the masks by this many pixels."),
                io.Float.Input("feather", default=0.0, min=0.0, max=100.0, step=0.5, advanced=True,
                               tooltip="Soften the edge: Gaussian blur sigma in pixels."),
                io.Combo.Input("mode", options=["union", "per_object"], default="union",
                               tooltip="union = one MASK of all selected objects; per_object = one MASK per object."),
                *_edge_inputs("The video frames (IMAGE batch): with edge_band > 0 the masks become soft mattes "
                              "that follow the image at the edges."),
            ],
            outputs=[
                io.Mask.Output("masks", is_output_list=True,
                               tooltip="union: one MASK [T, H, W]; per_object: one MASK [T, H, W] per selected object "
                                       "(a list: downstream runs once per item)."),
                io.String.Output("object_ids", tooltip="The selected ids, comma separated, in the list's order."),
            ],
        )

    @classmethod
    def execute(cls, tracks, select="", start_frame=0, end_frame=-1, grow=0, feather=0.0,
                mode="union", images=None, edge_band=0, smoothness=3e-3) -> io.NodeOutput:
        S.check_tracks(tracks)
        ids = S.select_objects(tracks, select)
        rng = S.frame_range(start_frame, end_frame, tracks.num_frames)
        edge = S.EdgeOptions(grow, feather, edge_band, smoothness)
        masks = S.mask_tensors(tracks, ids, rng, mode, edge, convert.image_frame_getter(images, tracks, "images"))
        return io.NodeOutput([_intermediate(m) for m in masks], ",".join(str(i) for i in ids))


class TracksToBBoxes(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="UniVS_TracksToBBoxes",
            display_name="UniVS Tracks to BBoxes",
            category=CATEGORY,
            search_aliases=ALIASES + ["bbox", "bounding box", "boxes"],
            description="Per-frame boxes of the selected objects: core BOUNDING_BOX lists and community BBOX (union box per frame).",
            inputs=[UniVSTracks.Input("tracks"), _select_inputs(), *_range_inputs()],
            outputs=[
                io.BoundingBox.Output("bboxes", tooltip="Per frame: a list of {x, y, width, height, score, id, label}."),
                io.BBOX.Output("bbox", tooltip="Per frame: (x0, y0, x1, y1) around all selected objects; (0,0,0,0) if none."),
            ],
        )

    @classmethod
    def execute(cls, tracks, select="", start_frame=0, end_frame=-1) -> io.NodeOutput:
        S.check_tracks(tracks)
        ids = S.select_objects(tracks, select)
        rng = S.frame_range(start_frame, end_frame, tracks.num_frames)
        return io.NodeOutput(S.bounding_boxes_per_frame(tracks, ids, rng), S.bbox_per_frame(tracks, ids, rng))


class OverlayPreview(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="UniVS_OverlayPreview",
            display_name="UniVS Overlay Preview",
            category=CATEGORY,
            search_aliases=ALIASES + ["overlay", "preview", "visualize"],
            description="Objects painted in their legend colours over the frames (or black), with outlines and id/label text.",
            inputs=[
                UniVSTracks.Input("tracks"),
                io.Image.Input("images", optional=True, tooltip="Frames to draw on (same size and count as the tracks)."),
                _select_inputs(),
                io.Float.Input("opacity", default=0.5, min=0.0, max=1.0, step=0.05),
                io.Boolean.Input("outline", default=True),
                io.Boolean.Input("labels", default=True, tooltip="Draw '<id> <label>' at each object's centre."),
                *_range_inputs(),
                io.Float.Input("flag_weak", default=0.5, min=0.0, max=1.0, step=0.05, optional=True,
                               tooltip="Frame a frame in red where an object's confidence falls below this share of "
                                       "its usual level, or where it is lost and found again: places to add a "
                                       "correction. 0 = off."),
            ],
            outputs=[io.Image.Output("overlay"),
                     io.String.Output("weak_frames", tooltip="The flagged frames, comma separated.")],
        )

    @classmethod
    def execute(cls, tracks, images=None, select="", opacity=0.5, outline=True, labels=True, start_frame=0,
                end_frame=-1, flag_weak=0.5) -> io.NodeOutput:
        S.check_tracks(tracks)
        ids = S.select_objects(tracks, select)
        rng = S.frame_range(start_frame, end_frame, tracks.num_frames)
        frames = None
        if images is not None:
            frames = convert.image_batch_source(images, "images")
            if (frames.height, frames.width) != (tracks.height, tracks.width):
                raise ValueError(f"images: {frames.width}x{frames.height} frames do not match the tracks ({tracks.width}x{tracks.height})")
            if frames.num_frames < rng.stop:
                raise ValueError(f"images: {frames.num_frames} frames, but the range ends at frame {rng.stop - 1}")
        weak = set(tracks.weak_frames(flag_weak, ids)) & set(rng) if flag_weak else set()
        out = torch.empty((len(rng), tracks.height, tracks.width, 3), dtype=torch.float32)
        pbar = comfy.utils.ProgressBar(len(rng))
        for k, f in enumerate(rng):
            bg = None if frames is None else frames.frame(f)
            img = S.overlay_frame(tracks, f, ids, bg, opacity, outline, labels)
            out[k] = torch.from_numpy(S.flag_frame(img) if f in weak else img).float().div_(255.0)
            pbar.update(1)
        listed = ",".join(str(f) for f in sorted(weak))
        text = f"weak frames (check these first): {listed}" if weak else "no weak frame"
        return io.NodeOutput(_intermediate(out), listed, ui={"text": [text]})


class ExportMatte(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="UniVS_ExportMatte",
            display_name="UniVS Export Matte",
            category=CATEGORY,
            search_aliases=ALIASES + ["export", "save", "alpha", "prores", "png sequence", "16 bit"],
            description=(
                "Writes mattes to the output folder: 8/16-bit PNG sequences, or alpha videos (ProRes 4444 .mov, "
                "VP9 .webm) coloured from the frames. Streams frame by frame (a VIDEO input is never fully decoded)."
            ),
            is_output_node=True,
            inputs=[
                UniVSTracks.Input("tracks"),
                _select_inputs(),
                io.Combo.Input("format", options=list(export.FORMATS), default="png16",
                               tooltip="; ".join(f"{k}: {v}" for k, v in export.FORMATS.items())),
                io.Combo.Input("mode", options=["union", "per_object"], default="union",
                               tooltip="union = one matte of all selected objects; per_object = one sequence/video per object."),
                io.String.Input("filename_prefix", default="univs/matte",
                                tooltip="Path under the output folder; a counter is appended."),
                io.Image.Input("images", optional=True, tooltip="Colour for alpha videos (IMAGE batch)."),
                io.Video.Input("video", optional=True, tooltip="Colour for alpha videos (core VIDEO, streamed)."),
                io.Float.Input("fps", default=0.0, min=0.0, max=240.0, step=0.001,
                               tooltip="Frame rate of alpha videos; 0 = from the video/tracks (24 if unknown)."),
                *_range_inputs(),
                io.Int.Input("grow", default=0, min=-256, max=256, advanced=True),
                io.Float.Input("feather", default=0.0, min=0.0, max=100.0, step=0.5, advanced=True),
                *_edge_inputs(None),
            ],
            outputs=[io.String.Output("paths", tooltip="Written folders/files, one per line.")],
        )

    @classmethod
    def execute(cls, tracks, select="", format="png16", mode="union", filename_prefix="univs/matte", images=None,
                video=None, fps=0.0, start_frame=0, end_frame=-1, grow=0, feather=0.0, edge_band=0,
                smoothness=3e-3) -> io.NodeOutput:
        S.check_tracks(tracks)
        ids = S.select_objects(tracks, select)
        frames = S.segmented_frames(tracks, S.frame_range(start_frame, end_frame, tracks.num_frames))
        base = export.next_output_base(folder_paths.get_output_directory(), filename_prefix)
        source, temp, getter = None, None, None
        rate = fps or tracks.fps
        edge = S.EdgeOptions(grow, feather, edge_band, smoothness)
        if (format in export.VIDEO_FORMATS or edge_band) and (images is not None or video is not None):
            source, temp = _open_frames(images, video)
            if (source.num_frames, source.height, source.width) != (tracks.num_frames, tracks.height, tracks.width):
                _close(source, temp)
                raise ValueError(
                    f"images / video: {source.num_frames} frames of {source.width}x{source.height} do not match the "
                    f"tracks ({tracks.num_frames} frames of {tracks.width}x{tracks.height})")
            if not rate and video is not None:
                rate = source.fps
            getter = _sequential_getter(source)
        pbar = comfy.utils.ProgressBar(max(1, len(frames)))
        try:
            paths = export.export_mattes(tracks, ids, frames, format, base, per_object=(mode == "per_object"),
                                         edge=edge, rgb_getter=getter, fps=rate or 24.0,
                                         progress=runtime.make_progress(pbar))
        finally:
            if source is not None:
                _close(source, temp)
        out_dir = folder_paths.get_output_directory()
        rel = [os.path.relpath(p, out_dir) for p in paths]
        note = f"{len(frames)} frames ({frames[0]}..{frames[-1]})"
        if format in export.VIDEO_FORMATS:
            note += f" at {rate:g} fps" if rate else " at 24 fps (frame rate unknown: connect fps or the video)"
        text = f"Wrote {note}, output folder:\n" + "\n".join(rel)
        return io.NodeOutput("\n".join(str(p) for p in paths), ui={"text": [text]})


def _edge_inputs(images_tooltip: str | None) -> list:
    """The soft-matte inputs of Tracks to Mask and Export Matte (plus the guiding frames where asked)."""
    inputs = [io.Image.Input("images", optional=True, tooltip=images_tooltip)] if images_tooltip else []
    return inputs + [
        io.Int.Input("edge_band", default=0, min=0, max=64, advanced=True, optional=True,
                     tooltip="Edge-aware soft matte: pixels on each side of the edge where alpha follows the image "
                             "(hair, motion blur); 0 = hard edge. Needs the frames (images / video)."),
        io.Float.Input("smoothness", default=3e-3, min=1e-6, max=1.0, step=1e-4, advanced=True, optional=True,
                       tooltip="Soft matte: larger = smoother alpha that follows the image less."),
    ]


def _sequential_getter(source):
    """Frame getter that streams: sequential requests are served from one decoder iterator."""
    state: dict[str, Any] = {"it": None, "next": None}

    def get(i: int) -> np.ndarray:
        if state["next"] != i:
            state["it"] = source.iter_frames(i, None)
        idx, frame = next(state["it"])
        state["next"] = idx + 1
        return frame

    return get


class TracksToSEGS(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="UniVS_TracksToSEGS",
            display_name="UniVS Tracks to SEGS",
            category=CATEGORY,
            search_aliases=ALIASES + ["segs", "impact", "detailer"],
            description=(
                "Impact-Pack SEGS of the selected objects. frame = -1 gives the video (AnimateDiff) kind: one SEG per "
                "object with a [T, h, w] mask over the frame range; frame >= 0 gives the per-image kind."
            ),
            inputs=[
                UniVSTracks.Input("tracks"),
                _select_inputs(),
                io.Int.Input("frame", default=-1, min=-1, max=10_000_000,
                             tooltip="-1 = all frames of the range (video SEGS); otherwise one frame."),
                io.Float.Input("crop_factor", default=3.0, min=1.0, max=10.0, step=0.1,
                               tooltip="Crop region = object box enlarged by this factor (Impact convention)."),
                io.Int.Input("drop_size", default=1, min=1, max=8192, advanced=True,
                             tooltip="Skip objects whose box is smaller than this many pixels in both sides."),
                io.Image.Input("images", optional=True, tooltip="Fill cropped_image from these frames."),
                *_range_inputs(),
            ],
            outputs=[io.SEGS.Output("segs")],
        )

    @classmethod
    def execute(cls, tracks, select="", frame=-1, crop_factor=3.0, drop_size=1, images=None, start_frame=0,
                end_frame=-1) -> io.NodeOutput:
        S.check_tracks(tracks)
        ids = S.select_objects(tracks, select)
        if frame >= 0:
            if frame >= tracks.num_frames:
                raise ValueError(f"frame: {frame} is outside the video (frames 0..{tracks.num_frames - 1})")
            frames = [frame]
        else:
            frames = list(S.frame_range(start_frame, end_frame, tracks.num_frames))
        getter = None
        if images is not None:
            src = convert.image_batch_source(images, "images")
            getter = lambda i: src.frame(i) if i < src.num_frames else None  # noqa: E731
        return io.NodeOutput(S.build_segs(tracks, ids, frames, crop_factor, drop_size, getter))


class TracksLegend(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="UniVS_TracksLegend",
            display_name="UniVS Tracks Legend",
            category=CATEGORY,
            search_aliases=ALIASES + ["legend", "ids", "labels", "info"],
            description="JSON legend (id, label, colour, score, first/last frame, shown) of the selected objects; "
                        "shown = false marks an object below the task's score threshold, which outputs leave out "
                        "unless it is selected by id or label.",
            inputs=[UniVSTracks.Input("tracks"),
                    _select_inputs("empty = every object, 'shown' false for those below the score threshold")],
            outputs=[io.String.Output("legend")],
        )

    @classmethod
    def execute(cls, tracks, select="") -> io.NodeOutput:
        S.check_tracks(tracks)
        every = select is None or (isinstance(select, str) and select.strip().lower() in ("", "*", "all"))
        text = S.legend_json(tracks, None if every else S.select_objects(tracks, select))
        return io.NodeOutput(text, ui={"text": [text]})


NODES: list[type[io.ComfyNode]] = [
    LoadUniVS,
    PromptTarget,
    TextRefer,
    PropagateMasks,
    PanopticVideo,
    TracksToMask,
    TracksToBBoxes,
    OverlayPreview,
    ExportMatte,
    TracksToSEGS,
    TracksLegend,
]


class UniVSExtension(ComfyExtension):
    @override
    async def get_node_list(self) -> list[type[io.ComfyNode]]:
        return list(NODES)


async def comfy_entrypoint() -> UniVSExtension:
    return UniVSExtension()
