"""Tests that need ComfyUI's own modules (``comfy_api``, ``folder_paths``, ``comfy``); skipped without them.

Run them with a ComfyUI checkout on the path, e.g.
``PYTHONPATH=/path/to/ComfyUI python -m pytest tests/test_nodes_comfy.py`` (ComfyUI's requirements installed).
The engine is replaced by small fakes where a real model would be needed, so these stay fast.
"""
from __future__ import annotations

import asyncio
import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

pytest.importorskip("comfy_api.latest")
pytest.importorskip("folder_paths")

ROOT = Path(__file__).resolve().parents[1]

from conftest import load_pack  # noqa: E402

pack = load_pack()
import comfy.model_management as mm  # noqa: E402
import comfy.utils  # noqa: E402
import folder_paths  # noqa: E402
from comfy_api.latest import io  # noqa: E402

from univs_pack.nodes import comfy_nodes as N  # noqa: E402
from univs_pack.nodes import runtime as R  # noqa: E402
import univs_engine.api as engine_api  # noqa: E402
from univs_engine.results import Tracks  # noqa: E402


def make_tracks(T=4, H=24, W=32) -> Tracks:
    tr = Tracks(T, H, W)
    tr.add_object(1, label="person")
    tr.add_object(2, label="car")
    for f in range(T):
        m = np.zeros((H, W), bool)
        m[2:8, 2 + f : 10 + f] = True
        tr.set_mask(f, 1, m, confidence=0.9)
    m = np.zeros((H, W), bool)
    m[12:20, 20:30] = True
    tr.set_mask(1, 2, m)
    return tr


def by_id():
    return {cls.GET_SCHEMA().node_id: cls for cls in N.NODES}


# ============================================================================================== registration
def test_entrypoint_lists_every_node_with_conventions():
    ext = asyncio.run(pack.comfy_entrypoint())
    nodes = asyncio.run(ext.get_node_list())
    assert nodes == N.NODES and len(nodes) == 11
    for cls in nodes:
        s = cls.GET_SCHEMA()
        assert s.node_id.startswith("UniVS_") and s.category == "segmentation/UniVS"
        assert {"roto", "rotoscope", "matte", "track"} <= set(s.search_aliases)
        assert s.description and s.display_name
        info = cls.GET_NODE_INFO_V1()  # what /object_info serves
        assert info["name"] == s.node_id
    assert not hasattr(pack, "NODE_CLASS_MAPPINGS")


def test_model_folder_registered_and_builtin_listed():
    assert "univs" in folder_paths.folder_names_and_paths
    paths, exts = folder_paths.folder_names_and_paths["univs"]
    assert ".safetensors" in exts and any(p.endswith("univs") for p in paths)
    info = N.LoadUniVS.GET_NODE_INFO_V1()
    opts = info["input"]["required"]["checkpoint"][1]["options"]
    assert opts[0] == "univs_small (built-in)"


WIDGET_TYPES = {"INT", "FLOAT", "STRING", "BOOLEAN", "COMBO"}


def _widget_names(cls) -> list[str]:
    info = cls.GET_NODE_INFO_V1()
    names = []
    for section in ("required", "optional"):
        for name in info["input_order"].get(section, []):
            spec = list(info["input"][section][name]) + [{}]
            typ, opts = spec[0], spec[1]
            if isinstance(typ, list) or (typ in WIDGET_TYPES and not opts.get("forceInput")):
                names.append(name)
    return names


def test_workflow_widgets_match_the_schemas():
    nodes = by_id()
    for f in sorted((ROOT / "workflows").glob("*.json")):
        wf = json.loads(f.read_text())
        for n in wf["nodes"]:
            if n["type"].startswith("UniVS_"):
                cls = nodes[n["type"]]
                names = _widget_names(cls)
                assert len(n["widgets_values"]) == len(names), f"{f.name}: {n['type']} widgets {names}"
                info = cls.GET_NODE_INFO_V1()["input"]
                for name, value in zip(names, n["widgets_values"]):
                    spec = info.get("required", {}).get(name) or info["optional"][name]
                    if spec[0] == "COMBO":
                        assert value in spec[1]["options"], f"{f.name}: {n['type']}.{name}={value!r}"
                for inp in n["inputs"]:
                    assert inp["name"] in {**info.get("required", {}), **info.get("optional", {})}, (f.name, inp)


# ============================================================================================== cheap nodes
def test_tracks_to_mask_union_list_and_ids():
    tr = make_tracks()
    (union,), ids = N.TracksToMask.execute(tracks=tr, select="person, car", start_frame=1, end_frame=2).args
    per, ids_per = N.TracksToMask.execute(tracks=tr, select="person, car", start_frame=1, end_frame=2,
                                          mode="per_object").args
    assert union.shape == (2, 24, 32) and isinstance(per, list) and len(per) == 2 and ids == ids_per == "1,2"
    assert per[1][0].sum() == 80 and per[1][1].sum() == 0
    assert torch.equal(union, torch.maximum(per[0], per[1]))
    with pytest.raises(ValueError, match="select: no object labelled 'dog'"):
        N.TracksToMask.execute(tracks=tr, select="dog")


def test_bboxes_overlay_segs_legend():
    tr = make_tracks()
    bbs, bbox = N.TracksToBBoxes.execute(tracks=tr, select="", start_frame=0, end_frame=-1).args
    assert len(bbs) == 4 and bbs[1][1]["label"] == "car" and bbox[0] == (2, 2, 10, 8)
    img = torch.rand(4, 24, 32, 3)
    tr.set_mask(2, 1, tr.mask(2, 1), confidence=0.2)  # a drop on frame 2: flagged for a correction
    ov, weak = N.OverlayPreview.execute(tracks=tr, images=img, select="1", opacity=0.5, outline=True, labels=False).args
    assert ov.shape == (4, 24, 32, 3) and ov.dtype == torch.float32 and weak == "2"
    red = torch.tensor([255, 40, 40]) / 255.0
    assert torch.allclose(ov[2, 0, 0], red) and not torch.allclose(ov[1, 0, 0], red)
    with pytest.raises(ValueError, match="images: 3 frames"):
        N.OverlayPreview.execute(tracks=tr, images=img[:3])
    (segs,) = N.TracksToSEGS.execute(tracks=tr, select="", frame=-1, crop_factor=2.0, images=img).args
    assert segs[0] == (24, 32) and segs[1][0].cropped_mask.shape[0] == 4
    out = N.TracksLegend.execute(tracks=tr, select="car")
    assert json.loads(out.args[0])[0]["label"] == "car"


def test_export_matte_writes_into_output_folder(tmp_path, monkeypatch):
    monkeypatch.setattr(folder_paths, "get_output_directory", lambda: str(tmp_path))
    tr = make_tracks()
    out = N.ExportMatte.execute(tracks=tr, select="", format="png8", mode="per_object", filename_prefix="univs/t")
    paths = out.args[0].splitlines()
    assert [Path(p).name for p in paths] == ["1_person", "2_car"]
    assert len(list(Path(paths[0]).glob("*.png"))) == 4
    assert "univs/t_00001/1_person" in out.ui["text"][0]
    partial = Tracks(4, 24, 32)
    partial.add_object(1)
    partial.set_mask(1, 1, np.ones((24, 32), bool))
    partial.mark_segmented(2)  # processed, object absent
    out = N.ExportMatte.execute(tracks=partial, format="png8", filename_prefix="univs/p")
    assert sorted(p.name for p in Path(out.args[0]).glob("*.png")) == ["00001.png", "00002.png"]
    with pytest.raises(ValueError, match="none of frames 3..3 was segmented"):
        N.ExportMatte.execute(tracks=partial, format="png8", start_frame=3)
    with pytest.raises(ValueError, match="do not match the tracks"):
        N.ExportMatte.execute(tracks=tr, format="prores4444_mov", images=torch.rand(2, 24, 32, 3))


def test_prompt_target_node_saves_editor_frames(tmp_path, monkeypatch):
    monkeypatch.setattr(folder_paths, "get_temp_directory", lambda: str(tmp_path))
    out = N.PromptTarget.execute(frame_index=2, object_id=0, label="cat", positive_coords='[{"x": 3, "y": 4}]',
                                 image=torch.rand(3, 40, 60, 3))
    (prompts,) = out.args
    assert prompts[0].obj_id == 1 and prompts[0].frame == 2
    frames = out.ui["univs_frames"]
    assert [f["frame"] for f in frames] == [0, 1, 2] and out.ui["univs_size"] == [60, 40, 3]
    assert (tmp_path / frames[0]["subfolder"] / frames[0]["filename"]).is_file()
    (chained,) = N.TextRefer.execute(expressions="the dog", frame_hint=0, object_id=0, prompts=prompts).args
    assert [p.obj_id for p in chained] == [1, 2]


# ============================================================================================== executors (fake engine)
class FakeNet(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.w = torch.nn.Parameter(torch.zeros(2))


def fake_model():
    return SimpleNamespace(net=FakeNet(), text=SimpleNamespace(), to=lambda *a, **k: None, cfg=SimpleNamespace(name="small"))


def test_load_model_wraps_for_memory_management(monkeypatch):
    seen = {}

    def fake_load(checkpoint, text_encoder=None, class_embeddings=None, device="cpu", dtype=torch.float32):
        seen.update(checkpoint=checkpoint, dtype=dtype)
        return fake_model()

    monkeypatch.setattr(engine_api, "load_model", fake_load)
    (handle,) = N.LoadUniVS.execute(checkpoint=R.BUILTIN_MODEL, precision="auto", device="cpu").args
    assert seen == {"checkpoint": "small", "dtype": torch.float32}
    assert isinstance(handle, R.UniVSHandle) and handle.patcher is not None and handle.has_text_encoder
    with pytest.raises(ValueError, match="checkpoint: 'missing.pth' was not found"):
        N.LoadUniVS.execute(checkpoint="missing.pth")


def _handle():
    return R.UniVSHandle(model=fake_model(), patcher=None, name="fake", has_text_encoder=True)


def test_propagate_masks_converts_inputs_and_reports_progress(monkeypatch):
    calls = {}

    def fake_track(model, video, prompts, options, progress, cancel, reuse):
        start, stop = options.start, options.stop
        calls.update(video=video, prompts=prompts, direction=options.direction, start=start, stop=stop,
                     preset=options.settings)
        tr = Tracks(video.num_frames, video.height, video.width)
        for p in prompts:
            if p.obj_id not in tr:
                tr.add_object(p.obj_id, p.label)
        for f in range(start, stop):
            m = np.zeros((video.height, video.width), bool)
            m[: f + 1, :2] = True
            tr.set_mask(f, 1, m)
            progress(f - start + 1, stop - start)
            assert cancel() is False
        return tr

    monkeypatch.setattr(engine_api, "track", fake_track)
    updates = []
    monkeypatch.setattr(comfy.utils, "PROGRESS_BAR_HOOK", lambda v, t, preview, node_id=None: updates.append((v, t)))
    prompts = N.PromptTarget.execute(frame_index=1, object_id=0, label="x", bboxes={"x": 1, "y": 1, "width": 3, "height": 3}).args[0]
    images = torch.rand(5, 8, 10, 3)
    (tracks,) = N.PropagateMasks.execute(model=_handle(), prompts=prompts, images=images, direction="forward",
                                         start_frame=1, end_frame=3, fps=12.5).args
    (masks,), _ = N.TracksToMask.execute(tracks=tracks, start_frame=1, end_frame=3).args
    assert calls["start"] == 1 and calls["stop"] == 4 and calls["preset"] == "auto" and calls["direction"] == "forward"
    assert calls["prompts"][0].box == (1.0, 1.0, 4.0, 4.0)
    assert masks.shape == (3, 8, 10) and masks[0].sum() == 4 and tracks.fps == 12.5
    assert tracks.segmented_frames() == [1, 2, 3]
    assert updates[-1] == (3, 3)
    (unknown,) = N.PropagateMasks.execute(model=_handle(), prompts=prompts, images=images).args
    assert unknown.fps is None  # an IMAGE batch without fps: no invented rate
    with pytest.raises(ValueError, match="connect only one of them"):
        N.PropagateMasks.execute(model=_handle(), prompts=prompts, images=images, video=object())
    with pytest.raises(ValueError, match="model: expected UNIVS_MODEL"):
        N.PropagateMasks.execute(model="nope", prompts=prompts, images=images)
    with pytest.raises(ValueError, match="outside the processed range"):
        N.PropagateMasks.execute(model=_handle(), prompts=prompts, images=images, start_frame=2)
    calls.clear()
    edge = N.PromptTarget.execute(frame_index=0, object_id=0, positive_coords="[[10, 2]]").args[0]
    with pytest.raises(ValueError, match=r"positive_coords \(PromptTarget, object 1, frame 0\): point \(10, 2\) "
                                         r"lies outside the 10x8 frame"):
        N.PropagateMasks.execute(model=_handle(), prompts=edge, images=images)
    assert not calls  # refused before the engine runs


def test_propagate_masks_reports_weak_frames_to_the_editor(monkeypatch):
    def fake_track(model, video, prompts, options, progress, cancel, reuse):
        tr = Tracks(video.num_frames, video.height, video.width)
        tr.add_object(1, "x")
        m = np.zeros((video.height, video.width), bool)
        m[:2, :2] = True
        for f in range(options.start, options.stop):
            tr.mark_segmented(f)
            if f != 4:  # lost on frame 4, weak on frame 2
                tr.set_mask(f, 1, m, confidence=0.1 if f == 2 else 0.8)
        return tr

    monkeypatch.setattr(engine_api, "track", fake_track)
    prompts = N.PromptTarget.execute(frame_index=1, object_id=0, positive_coords="[[1, 1]]").args[0]
    out = N.PropagateMasks.execute(model=_handle(), prompts=prompts, images=torch.rand(7, 8, 10, 3), start_frame=1)
    (weak,) = out.ui["univs_weak"]
    assert json.loads(json.dumps(out.ui)) == out.ui  # sent over the websocket and kept in the history as JSON
    assert weak == {"ratio": 0.5, "size": [10, 8, 7], "frames": [2, 4],
                    "objects": [{"id": 1, "label": "x", "level": 0.8, "weak": [[2, 0.1], [4, None]]}]}
    assert weak["frames"] == out.args[0].weak_frames(0.5) and out.ui["text"][0].startswith("7 frames")
    # replayed to the editors when the run is cached (ComfyUI >= 0.18 resends an intermediate output's ui)
    assert N.PropagateMasks.GET_SCHEMA().has_intermediate_output in (True, None)
    if "has_intermediate_output" in {f.name for f in __import__("dataclasses").fields(io.Schema)}:
        assert N.PropagateMasks.HAS_INTERMEDIATE_OUTPUT is True


def test_cancel_becomes_a_comfy_interrupt(monkeypatch):
    def fake_track(model, video, prompts, progress, cancel, **kw):
        mm.interrupt_current_processing(True)
        assert cancel() is True
        raise engine_api.Cancelled(Tracks(video.num_frames, video.height, video.width))

    monkeypatch.setattr(engine_api, "track", fake_track)
    prompts = N.PromptTarget.execute(frame_index=0, object_id=0, positive_coords="[[1, 1]]").args[0]
    try:
        with pytest.raises(mm.InterruptProcessingException):
            N.PropagateMasks.execute(model=_handle(), prompts=prompts, images=torch.rand(2, 4, 4, 3))
    finally:
        mm.interrupt_current_processing(False)


def _write_video(path: Path, n=6, w=32, h=24, fps=12):
    import av

    with av.open(str(path), "w") as c:
        s = c.add_stream("mpeg4", rate=fps)
        s.width, s.height, s.pix_fmt = w, h, "yuv420p"
        for i in range(n):
            frame = np.full((h, w, 3), i * 30, np.uint8)
            c.mux(s.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
        c.mux(s.encode(None))


def test_panoptic_from_core_video_streams_file(tmp_path, monkeypatch):
    from comfy_api.latest import InputImpl

    path = tmp_path / "clip.mp4"
    _write_video(path)
    seen = {}

    def fake_segment(model, video, task, vocabulary, options, progress, cancel):
        seen.update(kind=video.kind, n=video.num_frames, task=task, vocabulary=vocabulary, start=options.start,
                    stop=options.stop)
        tr = Tracks(video.num_frames, video.height, video.width)
        tr.add_object(1, "person")
        tr.set_mask(0, 1, np.ones((video.height, video.width), bool))
        return tr

    monkeypatch.setattr(engine_api, "segment", fake_segment)
    monkeypatch.setattr(folder_paths, "get_temp_directory", lambda: str(tmp_path / "temp"))
    tracks, legend = N.PanopticVideo.execute(model=_handle(), video=InputImpl.VideoFromFile(str(path)),
                                             task="instance", vocabulary="custom", custom_classes="person, dog").args
    assert seen == {"kind": "file", "n": 6, "task": "instance", "vocabulary": ["person", "dog"], "start": 0, "stop": 6}
    assert json.loads(legend)[0]["label"] == "person"
    assert tracks.fps == pytest.approx(12.0)
    trimmed = InputImpl.VideoFromFile(str(path)).as_trimmed(start_time=1 / 12, duration=3 / 12)
    N.PanopticVideo.execute(model=_handle(), video=trimmed, vocabulary="ytvis21")
    assert seen["kind"] == "file" and 2 <= seen["n"] <= 4 and seen["vocabulary"] == "ytvis21"
    assert not list((tmp_path / "temp").glob("univs_trim_*")), "temporary trimmed copy must be removed"


def test_vocabulary_choices_are_the_engines_own_list():
    """The node kept a hard-coded copy of the list for when the import failed (it lacked 'viposeg')."""
    from univs_engine.vocabularies import vocabulary_names

    schema = N.PanopticVideo.GET_SCHEMA()
    (vocab,) = [i for i in schema.inputs if i.id == "vocabulary"]
    assert list(vocab.options) == ["model default"] + vocabulary_names() + ["custom"]


def test_outputs_never_depend_on_the_graph():
    """ComfyUI caches a node's outputs by its inputs alone: a node that read its own links (hidden prompt /
    unique_id) to skip unconnected outputs would hand a consumer connected later a cached placeholder."""
    for cls in N.NODES:
        schema = cls.GET_SCHEMA()
        hidden = set(schema.hidden or [])
        if schema.is_output_node:  # ComfyUI adds prompt / extra_pnginfo to output nodes for image metadata
            hidden -= {io.Hidden.prompt}
        assert not hidden & {io.Hidden.prompt, io.Hidden.unique_id}, schema.node_id


def test_search_terms_reach_display_names():
    """Frontend 1.49 ranks a match in the name or display name before alias-only matches (which it then orders by
    how often core nodes are used), so each term a rotoscoper types must appear in a display name."""
    names = [cls.GET_SCHEMA().display_name.lower() for cls in N.NODES]
    for term in ("roto", "rotoscope", "matte", "track object"):
        assert any(term in n for n in names), term
