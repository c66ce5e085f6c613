"""Tests of the ComfyUI node pack's plain functions; ComfyUI is not needed (see test_nodes_comfy.py for that).

The pack folder is imported as a package named ``univs_pack`` (never as top-level ``nodes``: ComfyUI owns that).
"""
from __future__ import annotations

import io
import json
import os
import re
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]

from conftest import load_pack  # noqa: E402

pack = load_pack()
from univs_pack.nodes import convert as C  # noqa: E402
from univs_pack.nodes import export as E  # noqa: E402
from univs_pack.nodes import prompts as P  # noqa: E402
from univs_pack.nodes import runtime as R  # noqa: E402
from univs_pack.nodes import select as S  # noqa: E402
from univs_engine.api import Prompt  # noqa: E402
from univs_engine.results import Tracks  # noqa: E402


# ============================================================================================== fixtures
def make_tracks(T=4, H=24, W=32) -> Tracks:
    """Two objects: 1 'person' = a moving 6x8 block in frames 0..T-1; 2 'car' = a fixed block, frames 1..2."""
    tr = Tracks(T, H, W)
    tr.add_object(1, label="person", score=0.9)
    tr.add_object(2, label="car", score=0.8)
    for f in range(T):
        m = np.zeros((H, W), bool)
        m[2:8, 2 + f : 10 + f] = True
        tr.set_mask(f, 1, m, confidence=0.5 + 0.1 * f)
    for f in (1, 2):
        m = np.zeros((H, W), bool)
        m[12:20, 20:30] = True
        tr.set_mask(f, 2, m, confidence=0.7)
    return tr


# ============================================================================================== package layout
def test_pack_imports_without_comfyui_and_never_exposes_top_level_nodes():
    assert pack.WEB_DIRECTORY == "./web"
    assert not hasattr(pack, "NODE_CLASS_MAPPINGS"), "NODE_CLASS_MAPPINGS would make ComfyUI ignore comfy_entrypoint"
    mod = sys.modules.get("nodes")
    assert mod is None or not str(getattr(mod, "__file__", "")).startswith(str(ROOT))
    assert (ROOT / "web" / "js").is_dir()


def test_plain_modules_import_no_comfyui():
    for name in ("convert", "prompts", "select", "export", "runtime"):
        src = (ROOT / "nodes" / f"{name}.py").read_text()
        assert not re.search(r"^\s*(import|from)\s+(comfy|comfy_api|folder_paths|server)\b", src, re.M), name


def _node_ids() -> list[str]:
    return re.findall(r'node_id="(UniVS_\w+)"', (ROOT / "nodes" / "comfy_nodes.py").read_text())


def test_node_ids_prefixed_and_documented():
    ids = _node_ids()
    assert len(ids) == len(set(ids)) >= 10
    for nid in ids:
        assert (ROOT / "web" / "docs" / f"{nid}.md").is_file(), f"missing node doc for {nid}"


def test_workflows_reference_known_nodes_and_consistent_links():
    ids = set(_node_ids())
    files = sorted((ROOT / "workflows").glob("*.json"))
    assert len(files) >= 4
    for f in files:
        wf = json.loads(f.read_text())
        nodes = {n["id"]: n for n in wf["nodes"]}
        used = {n["type"] for n in wf["nodes"]}
        assert any(t.startswith("UniVS_") for t in used), f.name
        for t in used:
            if t.startswith("UniVS_"):
                assert t in ids, f"{f.name}: unknown node {t}"
        for link in wf.get("links", []):
            lid, src, src_slot, dst, dst_slot, typ = link
            assert src in nodes and dst in nodes, f"{f.name}: link {lid} to a missing node"
            assert nodes[dst]["inputs"][dst_slot]["link"] == lid, f"{f.name}: link {lid} not on its input"
            assert lid in (nodes[src]["outputs"][src_slot].get("links") or []), f"{f.name}: link {lid} not on its output"
        notes = [n for n in wf["nodes"] if n["type"] in ("Note", "MarkdownNote")]
        assert any("MinghanLi/UniVS" in " ".join(map(str, n.get("widgets_values", []))) for n in notes), f.name


# ============================================================================================== images, masks
def test_image_to_uint8_rounds_and_handles_channels():
    img = torch.tensor([[[[0.0, 0.5, 1.0]]]])  # [1,1,1,3]
    assert C.image_to_uint8(img).tolist() == [[[[0, 128, 255]]]]
    rgba = torch.rand(2, 4, 5, 4)
    assert C.image_to_uint8(rgba).shape == (2, 4, 5, 3)
    grey = torch.full((1, 2, 2, 1), 0.2)
    assert (C.image_to_uint8(grey) == 51).all()
    assert C.image_to_uint8(torch.rand(4, 5, 3)).shape == (1, 4, 5, 3)  # unbatched
    with pytest.raises(ValueError, match="images"):
        C.image_to_uint8(torch.rand(1, 3, 8, 8).permute(0, 2, 3, 1)[..., :2])
    with pytest.raises(ValueError, match="frames: expected an IMAGE"):
        C.image_to_uint8("nope", "frames")


def test_uint8_round_trip_and_lazy_frames():
    frames = np.random.default_rng(0).integers(0, 256, (5, 6, 7, 3), dtype=np.uint8)
    img = C.uint8_to_image(frames)
    assert img.dtype == torch.float32 and img.shape == (5, 6, 7, 3)
    assert np.array_equal(C.image_to_uint8(img), frames)
    lazy = C.image_batch_source(img)
    assert (lazy.num_frames, lazy.height, lazy.width) == (5, 6, 7)
    assert [i for i, _ in lazy.iter_frames(3, -1, -1)] == [3, 2, 1, 0]
    assert np.array_equal(lazy.frame(4), frames[4])
    with pytest.raises(IndexError, match="images: frame index 5"):
        lazy.frame(5)
    clips = list(lazy.iter_clips(2))
    assert [ids for ids, _ in clips] == [[0, 1], [2, 3], [4]] and np.array_equal(clips[1][1], frames[2:4])
    lazy.close()  # the nodes close every source they open


def test_masks_normalise_and_pick_frames():
    assert C.normalize_mask(torch.ones(4, 5)).shape == (1, 4, 5)
    assert C.normalize_mask(torch.ones(2, 1, 4, 5)).shape == (2, 4, 5)
    assert C.normalize_mask(torch.ones(2, 4, 5, 1)).shape == (2, 4, 5)
    seq = torch.zeros(3, 4, 5)
    seq[2, 1, 1] = 1.0
    assert C.mask_frame_to_bool(seq, 2).sum() == 1
    single = torch.zeros(1, 4, 5)
    single[0, 0, 0] = 0.9
    assert C.mask_frame_to_bool(single, 7)[0, 0]  # a single mask serves any frame
    with pytest.raises(ValueError, match="mask: the mask batch has 3"):
        C.mask_frame_to_bool(seq, 5)
    with pytest.raises(ValueError, match="mask: the mask is empty"):
        C.mask_frame_to_bool(seq, 0)
    out = C.bool_masks_to_tensor([np.eye(3, dtype=bool)] * 2, 3, 3)
    assert out.shape == (2, 3, 3) and out.dtype == torch.float32


# ============================================================================================== points, boxes, text
def test_parse_points_formats():
    assert C.parse_points('[{"x": 10, "y": 20}, {"x": 1.5, "y": 2}]') == [(10.0, 20.0), (1.5, 2.0)]
    assert C.parse_points({"x": 3, "y": 4}) == [(3.0, 4.0)]
    assert C.parse_points([[1, 2], [3, 4]]) == [(1.0, 2.0), (3.0, 4.0)]
    assert C.parse_points([5, 6]) == [(5.0, 6.0)]
    assert C.parse_points("") == [] and C.parse_points(None) == [] and C.parse_points("[]") == []
    with pytest.raises(ValueError, match="negative_coords: not valid JSON"):
        C.parse_points("[{x: 1}]", "negative_coords")
    with pytest.raises(ValueError, match="positive_coords: point 0 needs keys"):
        C.parse_points('[{"x": 1}]')
    with pytest.raises(ValueError, match="must be a number"):
        C.parse_points('[{"x": "a", "y": 1}]')


def test_parse_boxes_formats():
    bb = {"x": 10, "y": 20, "width": 30, "height": 40}
    assert C.parse_boxes(bb) == [(10.0, 20.0, 40.0, 60.0)]  # core BOUNDING_BOX
    assert C.parse_boxes([bb, bb]) == [(10.0, 20.0, 40.0, 60.0)] * 2
    per_frame = [[bb], [{"x": 0, "y": 0, "width": 5, "height": 5, "score": 0.9}]]  # core SAM3 Detect output
    assert C.parse_boxes(per_frame, frame=1) == [(0.0, 0.0, 5.0, 5.0)]
    assert C.parse_boxes((1, 2, 3, 4)) == [(1.0, 2.0, 3.0, 4.0)]  # community BBOX
    assert C.parse_boxes([(1, 2, 3, 4), [5, 6, 7, 8]]) == [(1.0, 2.0, 3.0, 4.0), (5.0, 6.0, 7.0, 8.0)]
    assert C.parse_boxes(torch.tensor([[1.0, 2.0, 3.0, 4.0]])) == [(1.0, 2.0, 3.0, 4.0)]
    assert C.parse_boxes('[[1, 2, 3, 4]]') == [(1.0, 2.0, 3.0, 4.0)]
    assert C.parse_boxes(None) == [] and C.parse_boxes("  ") == []
    with pytest.raises(ValueError, match="bboxes: box 0 .* empty or inverted"):
        C.parse_boxes((5, 5, 1, 1))
    with pytest.raises(ValueError, match="per-frame boxes cover 2 frames"):
        C.parse_boxes(per_frame, frame=4)
    with pytest.raises(ValueError, match="needs keys x, y, width, height"):
        C.parse_boxes({"left": 1})


def test_parse_vocabulary_and_expressions():
    assert C.parse_vocabulary("ytvis21", builtin=["ytvis21"]) == "ytvis21"
    assert C.parse_vocabulary("custom", "person, dog\n# note\ncar;Dog\n  red  car ") == ["person", "dog", "car", "red car"]
    with pytest.raises(ValueError, match="custom_classes"):
        C.parse_vocabulary("custom", " , \n")
    with pytest.raises(ValueError, match="vocabulary: unknown built-in"):
        C.parse_vocabulary("imaginary", builtin=["ytvis21"])
    ex = C.parse_expressions("dancer: the woman in red\n\n# skip\na dog running: fast\nthe car")
    assert ex == [("dancer", "the woman in red"), ("a dog running", "fast"), ("the car", "the car")]
    assert C.parse_expressions("the man, left: holding a cup")[0] == ("the man, left: holding a cup",) * 2
    with pytest.raises(ValueError, match="expressions: type at least one"):
        C.parse_expressions("  \n# only a comment")
    assert C.parse_int_list("1, 3 5-7", "x") == [1, 3, 5, 6, 7]


def _quick(fn, *args, bound_s=1.0, **kw):
    """fn(*args) must raise ValueError (the nodes' error type) within bound_s seconds."""
    import time

    t0 = time.perf_counter()
    with pytest.raises(ValueError) as e:
        fn(*args, **kw)
    assert time.perf_counter() - t0 < bound_s, f"{fn.__name__} took {time.perf_counter() - t0:.1f} s"
    return str(e.value)


def test_node_parsers_fail_closed_on_hostile_text():
    """Each was found crashing (RecursionError, OverflowError, MemoryError, AttributeError) or hanging."""
    deep = "[" * 1000 + "]" * 1000
    assert _quick(C.parse_points, deep).startswith("positive_coords: JSON nested more than")  # RecursionError
    assert _quick(C.parse_boxes, deep, "bboxes").startswith("bboxes: JSON nested more than")
    assert "more than 64 digits" in _quick(C.parse_points, "[[" + "9" * 400 + ", 1]]")  # OverflowError
    assert "out of range" in _quick(C.parse_points, "[[1e999, 1]]")
    assert "outside the accepted range" in _quick(C.parse_points, [[10 ** 400, 1]])  # a Python int
    assert "must be a number" in _quick(C.parse_boxes, [[True, 1, 2, 3]])
    assert "is not a whole number" in _quick(C.parse_int_list, "\u00b2", "frames")  # isdigit() but not int()
    assert "holds 99999999 values, more than" in _quick(C.parse_int_list, "1-99999999", "frames")  # MemoryError
    assert "runs backwards" in _quick(C.parse_int_list, "7-3", "frames")
    assert "expected text, got int" in _quick(C.parse_vocabulary, "custom", 5)  # AttributeError
    assert "expected text, got list" in _quick(C.parse_expressions, ["a"])
    many = ", ".join(f"class{i}" for i in range(12_000))  # the duplicate check was quadratic
    assert "custom_classes: 10001 classes, more than the 10000 accepted" in _quick(C.parse_vocabulary, "custom", many)
    assert len(C.parse_vocabulary("custom", ", ".join(f"c{i}" for i in range(9000)))) == 9000


@pytest.mark.parametrize("state, message", [
    ('{"objects": "x"}', "editor: 'objects' must be a list"),                        # was AttributeError
    ("[" * 1000 + "]" * 1000, "editor: the prompt editor state: JSON nested more than"),   # was RecursionError
    ('{"objects": [5]}', "editor: object 0 must be a JSON object"),
    ('{"objects": [{"id": 1, "frames": {"1e999": {"points": [[1, 1]]}}}]}', "frame key"),
    ('{"objects": [{"id": 1, "frames": {"0": "x"}}]}', "editor: object 1 frame 0: must be a JSON object"),
    ('{"objects": [{"id": 1, "frames": {"0": {"points": [[1, 1, 7]]}}}]}', "point label: 7 is outside"),
    ('{"objects": [{"id": 1, "frames": {"0": {"points": [[1e999, 1]]}}}]}', "the number 1e999 is out of range"),
    ('{"objects": [{"id": 1, "frames": {"0": {"points": [[' + "9" * 400 + ', 1]]}}}]}', "more than 64 digits"),
    ('{"objects": [{"id": "x", "frames": {}}]}', "editor: object 0 id: must be a number"),
    ('{"objects": [{"id": 1, "label": 5, "frames": {}}]}', "non-text label"),
])
def test_editor_state_fails_closed(state, message):
    assert message in _quick(P.parse_editor_state, state)


def test_select_ranges_cost_the_objects_not_the_width():
    """'1-999999999' iterated a billion ids (> 10 s)."""
    import time

    tr = make_tracks()
    t0 = time.perf_counter()
    assert S.select_objects(tr, "1-999999999") == [1, 2] and S.select_objects(tr, "2 - 99999999999") == [2]
    assert time.perf_counter() - t0 < 1.0
    assert "runs backwards" in _quick(S.select_objects, tr, "5-1")
    assert "expected text, got int" in _quick(S.select_objects, tr, 5)
    assert "no object labelled" in _quick(S.select_objects, tr, "\u00b2")
    assert "20000 entries, more than the 10000 accepted" in _quick(S.select_objects, tr, ",".join(["1"] * 20000))


# ============================================================================================== prompt chaining
def test_prompt_target_chain_assigns_ids_and_keeps_corrections():
    a = P.build_target_prompts(frame_index=0, object_id=0, label="dog", positive_coords='[{"x": 5, "y": 5}]')
    b = P.build_target_prompts(frame_index=0, object_id=0, bboxes={"x": 1, "y": 1, "width": 4, "height": 4}, previous=a)
    c = P.build_target_prompts(frame_index=3, object_id=1, positive_coords='[{"x": 6, "y": 6}]',
                               negative_coords='[{"x": 1, "y": 1}]', previous=b)
    assert [(p.obj_id, p.frame, p.kind) for p in c] == [(1, 0, "points"), (2, 0, "box"), (1, 3, "points")]
    assert c[2].point_labels == (1, 0)
    assert a == c[:1] or a[0] is c[0]  # chaining never mutates the upstream list
    assert len(a) == 1


def test_prompt_target_several_boxes_give_several_objects_and_errors():
    boxes = [(0, 0, 4, 4), (5, 5, 9, 9), (1, 1, 2, 2)]
    out = P.build_target_prompts(frame_index=2, object_id=0, label="car", bboxes=boxes)
    assert [p.obj_id for p in out] == [1, 2, 3] and all(p.label == "car" for p in out)
    out = P.build_target_prompts(frame_index=2, object_id=7, bboxes=boxes)
    assert [p.obj_id for p in out] == [7, 8, 9]
    with pytest.raises(ValueError, match="bboxes: 3 boxes were given together with points"):
        P.build_target_prompts(frame_index=0, object_id=0, bboxes=boxes, positive_coords="[[1, 1]]")
    with pytest.raises(ValueError, match="negative_coords: negative clicks alone"):
        P.build_target_prompts(frame_index=0, object_id=0, negative_coords="[[1, 1]]")
    with pytest.raises(ValueError, match="PromptTarget: no cue given"):
        P.build_target_prompts(frame_index=0, object_id=0)
    with pytest.raises(ValueError, match="frame_index"):
        P.build_target_prompts(frame_index=-1, object_id=0, positive_coords="[[1, 1]]")


def test_prompt_target_mask_and_editor_state():
    m = torch.zeros(1, 8, 8)
    m[0, 2:4, 2:4] = 1
    out = P.build_target_prompts(frame_index=5, object_id=3, mask=m)
    assert out[0].mask.shape == (8, 8) and out[0].mask.sum() == 4 and out[0].obj_id == 3
    state = {"version": 1, "objects": [
        {"id": 1, "label": "a", "frames": {"0": {"points": [[3, 4, 1], [5, 5, 0]], "box": None}}},
        {"id": 2, "label": "b", "frames": {"0": {"points": [], "box": [1, 1, 6, 6]},
                                           "4": {"points": [[2, 2, 1]]}}},
    ]}
    out = P.build_target_prompts(frame_index=0, object_id=0, editor_state=json.dumps(state))
    assert [(p.obj_id, p.frame, p.kind) for p in out] == [(1, 0, "points"), (2, 0, "box"), (2, 4, "points")]
    assert out[0].point_labels == (1, 0)
    with pytest.raises(ValueError, match="editor: object 1 on frame 0 has only negative"):
        P.parse_editor_state({"objects": [{"id": 1, "frames": {"0": {"points": [[1, 1, 0]]}}}]})
    assert P.parse_editor_state("") == [] and P.parse_editor_state('{"objects": []}') == []


def test_text_refer_prompts():
    out = P.build_text_prompts(expressions="dancer: the woman in red\nthe dog", frame_hint=2)
    assert [(p.obj_id, p.label, p.text, p.frame) for p in out] == [
        (1, "dancer", "the woman in red", 2), (2, "the dog", "the dog", 2)]
    mixed = P.build_target_prompts(frame_index=0, object_id=0, positive_coords="[[1, 1]]", previous=out)
    assert [p.obj_id for p in mixed] == [1, 2, 3]
    assert "object 1 [dancer] @ frame 2: text 'the woman in red'" in P.describe_prompts(mixed)


def test_to_engine_prompts_validates_and_merges():
    specs = P.build_target_prompts(frame_index=1, object_id=0, label="cat", positive_coords="[[2, 2]]")
    specs = P.build_target_prompts(frame_index=1, object_id=1, negative_coords="[[9, 9]]",
                                   positive_coords="[[3, 3]]", previous=specs)
    specs = P.build_target_prompts(frame_index=0, object_id=1, bboxes=(0, 0, 12, 10), previous=specs)
    out = P.to_engine_prompts(specs, num_frames=4, height=10, width=12)
    assert all(isinstance(p, Prompt) for p in out)
    assert [(p.obj_id, p.frame) for p in out] == [(1, 0), (1, 1)]
    assert out[0].box == (0.0, 0.0, 12.0, 10.0)  # a box may end on the frame's edge
    assert list(out[1].points) == [(2.0, 2.0), (3.0, 3.0), (9.0, 9.0)] and list(out[1].point_labels) == [1, 1, 0]
    assert out[0].label == out[1].label == "cat"
    with pytest.raises(ValueError, match="frame 1 is outside the processed range 2..3"):
        P.to_engine_prompts(specs, num_frames=4, height=10, width=12, start=2)
    with pytest.raises(ValueError, match=r"point \(2, 2\) lies outside the 1x1 frame"):
        P.to_engine_prompts(specs, num_frames=4, height=1, width=1)
    with pytest.raises(ValueError, match="frame 1 is outside the video"):
        P.to_engine_prompts(specs, num_frames=1, height=10, width=12)
    with pytest.raises(ValueError, match="prompts: the prompt list is empty"):
        P.to_engine_prompts((), num_frames=1, height=1, width=1)
    m = P.build_target_prompts(frame_index=0, object_id=0, mask=torch.ones(1, 5, 5))
    with pytest.raises(ValueError, match="mask size 5x5 differs from the video size 12x10"):
        P.to_engine_prompts(m, num_frames=1, height=10, width=12)
    with pytest.raises(ValueError, match="prompts: expected UNIVS_PROMPTS"):
        P.to_engine_prompts("x", num_frames=1, height=1, width=1)


W12 = dict(width=12, height=10)


@pytest.mark.parametrize("kwargs, message", [
    # a click at x = width or y = height was accepted here and refused by the engine deep inside the run
    (dict(positive_coords='[{"x": 12, "y": 3}]'),
     r"positive_coords \(PromptTarget, object 1, frame 2\): point \(12, 3\) lies outside the 12x10 frame "
     r"\(need 0 <= x < 12 and 0 <= y < 10"),
    (dict(positive_coords="[[1, 1]]", negative_coords="[[4, 10]]"),
     r"negative_coords \(PromptTarget, object 1, frame 2\): point \(4, 10\) lies outside the 12x10 frame"),
    (dict(positive_coords="[[-0.5, 1]]"), r"positive_coords .*: point \(-0.5, 1\) lies outside"),
    # a box past the frame was clipped here and refused by the engine
    (dict(bboxes=(2, 2, 13, 8)),
     r"bboxes \(PromptTarget, object 1, frame 2\): box \(2, 2, 13, 8\) lies outside the 12x10 frame "
     r"\(need 0 <= x0, 0 <= y0, x1 <= 12 and y1 <= 10"),
    (dict(bboxes={"x": -1, "y": 0, "width": 5, "height": 5}), r"bboxes .*: box \(-1, 0, 4, 5\) lies outside"),
    (dict(bboxes=[(0, 0, 4, 4), (5, 5, 12, 11)]), r"bboxes \(PromptTarget, object 2, frame 2\): box \(5, 5, 12, 11\)"),
    (dict(positive_coords="[[1, 1]]", bboxes=(0, 0, 40, 40)), r"bboxes .*object 1.*box \(0, 0, 40, 40\) lies outside"),
    (dict(editor=json.dumps({"objects": [{"id": 4, "frames": {"2": {"points": [[12, 0, 1]]}}}]})),
     r"editor \(prompt editor, object 4, frame 2\): point \(12, 0\) lies outside the 12x10 frame"),
    (dict(editor=json.dumps({"objects": [{"id": 4, "frames": {"2": {"box": [0, 0, 12, 11]}}}]})),
     r"editor \(prompt editor, object 4, frame 2\): box \(0, 0, 12, 11\) lies outside the 12x10 frame"),
])
def test_clicks_and_boxes_outside_the_frame_are_refused_naming_input_object_and_value(kwargs, message):
    """The nodes apply the engine's rule (univs_engine/prompt_checks.py) when the video size is known; the
    error names the node input, the object and the value, and nothing is clipped."""
    editor = kwargs.pop("editor", "")
    specs = P.build_target_prompts(frame_index=2, object_id=0, editor_state=editor, **kwargs)
    with pytest.raises(ValueError, match=message):
        P.to_engine_prompts(specs, num_frames=4, **W12)


def test_clicks_and_boxes_on_the_frame_edges_reach_the_engine_unchanged():
    from univs_engine.api import prompt_to_mask

    specs = P.build_target_prompts(frame_index=0, object_id=0, positive_coords="[[11.5, 9], [0, 0]]",
                                   negative_coords="[[11, 0]]", bboxes=(0, 0, 12, 10))
    state = {"objects": [{"id": 5, "frames": {"1": {"points": [[11, 9, 1]], "box": [3, 3, 12, 10]}}}]}
    specs = P.build_target_prompts(frame_index=1, object_id=0, editor_state=json.dumps(state), previous=specs)
    out = P.to_engine_prompts(specs, num_frames=4, **W12)
    assert list(out[0].points) == [(11.5, 9.0), (0.0, 0.0), (11.0, 0.0)] and out[0].box == (0.0, 0.0, 12.0, 10.0)
    assert list(out[1].points) == [(11.0, 9.0)] and out[1].box == (3.0, 3.0, 12.0, 10.0)
    for p in out:  # what the nodes let through, the engine takes
        assert prompt_to_mask(p, 10, 12).any()


# ============================================================================================== selection
def test_select_objects_by_id_label_range_and_exclusion():
    tr = make_tracks()
    tr.add_object(3, label="Person")
    assert S.select_objects(tr, "") == [1, 2, 3] == S.select_objects(tr, "all")
    assert S.select_objects(tr, "2") == [2]
    assert S.select_objects(tr, "person") == [1, 3]
    assert S.select_objects(tr, "car, 1") == [1, 2]
    assert S.select_objects(tr, "1-2") == [1, 2]
    assert S.select_objects(tr, "!car") == [1, 3]
    assert S.select_objects(tr, "person, !3") == [1]
    with pytest.raises(ValueError, match=r"select: no object with id 9; the tracks hold ids \[1, 2, 3\]"):
        S.select_objects(tr, "9")
    with pytest.raises(ValueError, match="select: no object labelled 'dog'"):
        S.select_objects(tr, "dog")
    with pytest.raises(ValueError, match="tracks: expected UNIVS_TRACKS"):
        S.select_objects("nope")



def test_select_objects_default_is_the_shown_objects_explicit_picks_any():
    """Below the tracks' score threshold (a VIS run's class threshold) an object is left out of an empty / all
    selection (what every output node draws by default), but an id or label still picks it."""
    tr = make_tracks()
    tr.add_object(3, label="ghost", score=0.02)
    tr.min_score = 0.05
    assert S.select_objects(tr, "") == S.select_objects(tr, "*") == S.select_objects(tr, " ALL ") == [1, 2]
    assert S.select_objects(tr, None) == [1, 2] and S.select_objects(tr, "all, !car") == [1]
    assert S.select_objects(tr, "!car") == [1]  # exclusions alone: the shown objects less those
    assert S.select_objects(tr, "3") == [3] and S.select_objects(tr, "ghost") == [3]
    assert S.select_objects(tr, "1-3") == [1, 2, 3] and S.select_objects(tr, "all, 3") == [1, 2, 3]
    legend = json.loads(S.legend_json(tr))
    assert [(r["id"], r["shown"]) for r in legend] == [(1, True), (2, True), (3, False)]
    tr.min_score = 0.0  # prompt-guided tracks: everything shown
    assert S.select_objects(tr, "") == [1, 2, 3]


def test_frame_range():
    assert S.frame_range(0, -1, 5) == range(0, 5)
    assert S.frame_range(1, 3, 5) == range(1, 4)
    with pytest.raises(ValueError, match="end_frame: 7 is outside"):
        S.frame_range(0, 7, 5)
    with pytest.raises(ValueError, match="end_frame: 1 is before start_frame 2"):
        S.frame_range(2, 1, 5)
    with pytest.raises(ValueError, match="start_frame: 5 is outside"):
        S.frame_range(5, -1, 5)


def test_masks_union_per_object_and_refine():
    tr = make_tracks()
    union = S.union_mask_tensor(tr, [1, 2], range(4))
    assert union.shape == (4, 24, 32) and union.dtype == torch.float32
    assert union[1].sum() == 48 + 80 and union[0].sum() == 48
    per = S.object_mask_tensors(tr, [2], range(1, 3))
    assert len(per) == 1 and per[0].shape == (2, 24, 32) and per[0].sum() == 160
    m = torch.zeros(9, 9)
    m[4, 4] = 1
    assert S.refine_mask(m, grow=1).sum() == 9
    assert S.refine_mask(S.refine_mask(m, grow=2), grow=-2).sum() == 1
    soft = S.refine_mask(m, feather=1.0)
    assert 0 < soft.max() < 1 and abs(soft.sum().item() - 1.0) < 1e-4
    assert S.union_mask_tensor(tr, [], range(2)).sum() == 0


def test_boxes_and_legend():
    tr = make_tracks()
    bbs = S.bounding_boxes_per_frame(tr, [1, 2], range(4))
    assert len(bbs) == 4 and len(bbs[0]) == 1 and len(bbs[1]) == 2
    assert {k: bbs[0][0][k] for k in ("x", "y", "width", "height", "id", "label")} == {
        "x": 2, "y": 2, "width": 8, "height": 6, "id": 1, "label": "person"}
    assert bbs[0][0]["score"] == pytest.approx(0.5)
    assert S.bbox_per_frame(tr, [1, 2], [1, 3]) == [(3, 2, 30, 20), (5, 2, 13, 8)]
    assert S.bbox_per_frame(tr, [2], [0]) == [(0, 0, 0, 0)]
    legend = json.loads(S.legend_json(tr))
    assert [r["id"] for r in legend] == [1, 2] and legend[1]["first_frame"] == 1 and legend[1]["last_frame"] == 2
    assert re.fullmatch(r"#[0-9a-f]{6}", legend[0]["color"])
    assert [r["id"] for r in json.loads(S.legend_json(tr, [2]))] == [2]


def test_overlay_frame_paints_colours_and_checks_size():
    tr = make_tracks()
    bg = np.full((24, 32, 3), 100, np.uint8)
    out = S.overlay_frame(tr, 1, [1, 2], bg, opacity=1.0, outline=False, labels=False)
    assert tuple(out[4, 5]) == tr.info(1).color and tuple(out[15, 25]) == tr.info(2).color
    assert tuple(out[0, 0]) == (100, 100, 100)
    half = S.overlay_frame(tr, 1, [1], bg, opacity=0.5, outline=False, labels=False)
    c = np.array(tr.info(1).color)
    assert np.abs(half[4, 5].astype(int) - (100 + c) / 2).max() <= 1
    labelled = S.overlay_frame(tr, 1, [1, 2], None, opacity=0.5, labels=True)
    assert labelled.shape == (24, 32, 3) and labelled.dtype == np.uint8
    with pytest.raises(ValueError, match="images: frame size 4x4 differs"):
        S.overlay_frame(tr, 0, [1], np.zeros((4, 4, 3), np.uint8))


def test_weak_report_matches_weak_frames_per_object_and_is_json():
    tr = make_tracks(T=8)
    tr.set_mask(3, 1, np.pad(np.ones((2, 2), bool), ((0, 22), (0, 30))), confidence=0.1)  # weak: 0.1 < 0.5 x median
    tr.clear_mask(5, 1)  # lost between frames that have it
    rep = S.weak_report(tr)
    assert json.loads(json.dumps(rep)) == rep
    assert rep["ratio"] == S.WEAK_RATIO == 0.5 and rep["size"] == [32, 24, 8]
    assert rep["frames"] == tr.weak_frames(0.5) == [3, 5]
    one, two = rep["objects"]
    assert (one["id"], one["label"], two["id"], two["label"]) == (1, "person", 2, "car")
    assert one["weak"] == [[3, 0.1], [5, None]] and two["weak"] == [] and two["level"] == 0.7
    assert one["level"] == float(np.median([tr.confidence(f, 1) for f in tr.frames_with(1)]))
    assert S.weak_report(tr, frames=range(4, 8))["frames"] == [5]
    assert S.weak_report(tr, ratio=0.0)["frames"] == [5]  # a lost object is reported at any ratio
    assert S.weak_report(tr) == rep  # a pure function of the tracks: a cached run replays the same marks


def _impact_combined_mask(segs):
    """Impact Pack's segs_to_combined_mask, restated for the 2-D case."""
    (h, w), items = segs
    mask = np.zeros((h, w), dtype=np.uint8)
    for seg in items:
        cr = seg.crop_region
        mask[cr[1]:cr[3], cr[0]:cr[2]] |= (seg.cropped_mask * 255).astype(np.uint8)
    return mask > 0


def test_segs_image_and_video_kinds():
    tr = make_tracks()
    shape, segs = S.build_segs(tr, [1, 2], [1], crop_factor=1.5)
    assert shape == (24, 32) and [s.label for s in segs] == ["person", "car"]
    assert segs[0]._fields == ("cropped_image", "cropped_mask", "confidence", "crop_region", "bbox", "label",
                               "control_net_wrapper")
    assert np.array_equal(_impact_combined_mask((shape, segs)), tr.union(1))
    assert segs[0].bbox == [3, 2, 11, 8] and segs[0].cropped_mask.ndim == 2
    shape, vsegs = S.build_segs(tr, [1, 2], range(4), crop_factor=1.0)
    person = vsegs[0]
    assert person.cropped_mask.shape == (4, person.crop_region[3] - person.crop_region[1],
                                         person.crop_region[2] - person.crop_region[0])
    assert person.bbox == [2, 2, 13, 8]
    frames = C.image_to_uint8(torch.rand(4, 24, 32, 3))
    _, withimg = S.build_segs(tr, [2], [1, 2], image_getter=lambda i: frames[i])
    assert withimg[0].cropped_image.shape[0] == 2 and withimg[0].cropped_image.shape[-1] == 3
    assert S.build_segs(tr, [2], [0])[1] == []  # the car is absent from frame 0


# ============================================================================================== export
def test_export_png8_png16_union_and_per_object(tmp_path):
    from PIL import Image

    tr = make_tracks()
    base = E.next_output_base(str(tmp_path), "shots/roto")
    assert base == tmp_path / "shots" / "roto_00001"
    paths = E.export_mattes(tr, [1, 2], range(4), "png16", base)
    assert paths == [base / "matte"] and len(list(paths[0].glob("*.png"))) == 4
    a = np.array(Image.open(paths[0] / "00001.png"))
    assert a.dtype == np.uint16 and a.max() == 65535 and (a > 0).sum() == 48 + 80
    base2 = E.next_output_base(str(tmp_path), "shots/roto")
    assert base2.name == "roto_00002"
    paths = E.export_mattes(tr, [1, 2], [1, 2], "png8", base2, per_object=True, edge=S.EdgeOptions(feather=1.0))
    assert [p.name for p in paths] == ["1_person", "2_car"]
    soft = np.array(Image.open(paths[1] / "00002.png"))
    assert soft.dtype == np.uint8 and 0 < soft[16, 20] < 255 or soft[15, 19] not in (0, 255)
    with pytest.raises(ValueError, match="format: unknown format"):
        E.export_mattes(tr, [1], [0], "exr", base)
    with pytest.raises(ValueError, match="select: no object selected"):
        E.export_mattes(tr, [], [0], "png8", base)
    with pytest.raises(ValueError, match="filename_prefix"):
        E.next_output_base(str(tmp_path), "../escape")


def test_export_alpha_video_round_trip(tmp_path):
    from univs_engine.io.video import iter_rgba_frames

    tr = make_tracks(T=3, H=32, W=48)
    rgb = np.zeros((32, 48, 3), np.uint8)
    rgb[..., 0] = 200
    paths = E.export_mattes(tr, [1], range(3), "prores4444_mov", tmp_path / "clip_00001", rgb_getter=lambda i: rgb, fps=12)
    assert paths[0].name == "clip_00001_matte.mov" and paths[0].is_file()
    frames = list(iter_rgba_frames(paths[0]))
    assert len(frames) == 3
    alpha = frames[1][..., 3]
    assert alpha[4, 6] > 200 and alpha[30, 40] < 30
    assert abs(int(frames[1][4, 6, 0]) - 200) < 12


# ============================================================================================== runtime glue
class FakeFolderPaths:
    def __init__(self, root: Path):
        self.models_dir = str(root / "models")
        self.folder_names_and_paths = {}
        self.root = root

    def add_model_folder_path(self, name, path, is_default=False):
        if name in self.folder_names_and_paths:
            paths, _ = self.folder_names_and_paths[name]
            if path not in paths:
                paths.insert(0, path) if is_default else paths.append(path)
        else:
            self.folder_names_and_paths[name] = ([path], set())

    def get_folder_paths(self, name):
        return list(self.folder_names_and_paths[name][0])

    def get_filename_list(self, name):
        paths, exts = self.folder_names_and_paths[name]
        out = []
        for p in paths:
            for f in sorted(Path(p).glob("*")) if Path(p).is_dir() else []:
                if not exts or f.suffix in exts:
                    out.append(f.name)
        return out

    def get_full_path(self, name, filename):
        for p in self.folder_names_and_paths[name][0]:
            f = Path(p) / filename
            if f.is_file():
                return str(f)
        return None


def test_model_folder_honours_extra_paths_and_filters_files(tmp_path):
    fp = FakeFolderPaths(tmp_path)
    extra = tmp_path / "nas" / "univs"
    extra.mkdir(parents=True)
    fp.folder_names_and_paths["univs"] = ([str(extra)], set())  # from extra_model_paths.yaml
    paths = R.register_model_folder(fp)
    assert paths == [str(extra), str(tmp_path / "models" / "univs")]
    (extra / "univs_swinl.safetensors").write_bytes(b"x")
    (extra / "README.txt").write_text("not a model")
    (tmp_path / "models" / "univs" / "text_rn50x4.pth").write_bytes(b"x")
    opts = R.model_file_options(fp)
    assert opts == [R.BUILTIN_MODEL, "univs_swinl.safetensors", "text_rn50x4.pth"]
    assert R.model_file_options(fp, builtin=False, none=True)[0] == "none"
    assert R.resolve_model_file(fp, R.BUILTIN_MODEL, "checkpoint") == "small"
    assert R.resolve_model_file(fp, "none", "text_encoder") is None
    assert R.resolve_model_file(fp, "univs_swinl.safetensors", "checkpoint") == str(extra / "univs_swinl.safetensors")
    with pytest.raises(ValueError, match="checkpoint: 'gone.pth' was not found in the UniVS model folders"):
        R.resolve_model_file(fp, "gone.pth", "checkpoint")


def test_device_and_precision():
    mm = SimpleNamespace(get_torch_device=lambda: torch.device("cpu"), should_use_bf16=lambda *a, **k: True)
    assert R.resolve_device("auto", mm) == torch.device("cpu")
    with pytest.raises(ValueError, match="device: 'gpu'"):
        R.resolve_device("gpu", mm)
    assert R.resolve_precision("auto", torch.device("cpu"), mm) == torch.float32
    assert R.resolve_precision("auto", torch.device("cuda"), mm) == torch.bfloat16
    mm.should_use_bf16 = lambda *a, **k: False
    assert R.resolve_precision("auto", torch.device("cuda"), mm) == torch.float32
    assert R.resolve_precision("fp16", torch.device("cuda"), mm) == torch.float16
    with pytest.raises(ValueError, match="precision: bf16 is not supported on the CPU"):
        R.resolve_precision("bf16", torch.device("cpu"), mm)
    assert R.resolve_precision("auto", torch.device("mps"), mm) == torch.float32
    with pytest.raises(ValueError, match="precision: fp16 is not supported on MPS"):  # it would silently run fp32
        R.resolve_precision("fp16", torch.device("mps"), mm)


def test_progress_and_cancel():
    calls = []
    R.make_progress(SimpleNamespace(update_absolute=lambda v, t: calls.append((v, t))))(3, 10)
    assert calls == [(3, 10)]
    flag = {"v": False}
    cancel = R.make_cancel(SimpleNamespace(processing_interrupted=lambda: flag["v"]))
    assert cancel() is False
    flag["v"] = True
    assert cancel() is True


def test_video_to_path(tmp_path):
    src = tmp_path / "clip.mp4"
    src.write_bytes(b"data")

    class FileVideo:
        def get_stream_source(self):
            return str(src)

        def get_active_trim_window(self):
            return 0.0, 0.0

    assert R.video_to_path(FileVideo(), str(tmp_path / "t")) == (str(src), False)

    class MemVideo(FileVideo):
        def get_stream_source(self):
            return io.BytesIO(b"abc")

    path, temp = R.video_to_path(MemVideo(), str(tmp_path / "t"))
    assert temp and Path(path).read_bytes() == b"abc"

    class Trimmed(FileVideo):
        def get_active_trim_window(self):
            return 1.0, 2.0

        def save_to(self, path):
            Path(path).write_bytes(b"trimmed")

    path, temp = R.video_to_path(Trimmed(), str(tmp_path / "t"))
    assert temp and Path(path).read_bytes() == b"trimmed"
    with pytest.raises(ValueError, match="video: expected a VIDEO"):
        R.video_to_path(object(), str(tmp_path))


def test_handle_prepare_and_release_use_memory_manager():
    moved = []
    model = SimpleNamespace(to=lambda d: moved.append(str(d)))
    loaded, emptied = [], []
    mm = SimpleNamespace(load_models_gpu=lambda ps, **k: loaded.append((ps, k)), soft_empty_cache=lambda: emptied.append(1))
    patcher = SimpleNamespace(offload_device=torch.device("cpu"))
    h = R.UniVSHandle(model=model, patcher=patcher, device=torch.device("cpu"), offload_after_run=True)
    assert h.prepare(mm) is model and loaded[0][0] == [patcher] and loaded[0][1] == {"force_full_load": True}
    h.release(mm)
    assert moved == ["cpu", "cpu"] and emptied == [1]


def test_editor_js_colours_match_engine_colours():
    import shutil
    import subprocess

    from univs_engine.results import object_color

    node = shutil.which("node")
    if node is None:
        pytest.skip("node.js not installed")
    js = ROOT / "web" / "js" / "univs_prompt_editor.js"
    script = (
        "globalThis.window = {comfyAPI: {app: {app: {registerExtension() {}}}, api: {api: {}}}};"
        f"const m = await import({json.dumps(js.as_uri())});"
        "console.log(JSON.stringify([1, 2, 3, 17, 250].map(m.objectColor)));"
        "console.log(JSON.stringify(m.parseState('not json')));"
    )
    out = subprocess.run([node, "--input-type=module", "-e", script], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    colours, state = out.stdout.strip().splitlines()
    assert json.loads(colours) == [f"rgb({','.join(map(str, object_color(i)))})" for i in (1, 2, 3, 17, 250)]
    assert json.loads(state) == {"version": 1, "objects": []}


def test_official_pth_is_converted_once_beside_itself(tmp_path):
    import hashlib

    from univs_engine.config import get_config
    from univs_engine.modeling.univs import build_univs
    from univs_pack.nodes import runtime

    src = tmp_path / "univs_small_stage3.pth"
    torch.save({"model": build_univs(get_config("small")).state_dict(), "iteration": 1}, src)
    digest = hashlib.sha256(src.read_bytes()).hexdigest()
    out = runtime.converted_checkpoint(str(src))
    assert out == str(tmp_path / "univs_small_stage3.safetensors")
    assert hashlib.sha256(src.read_bytes()).hexdigest() == digest  # the user's file is untouched
    stamp = Path(out).stat().st_mtime_ns
    assert runtime.converted_checkpoint(str(src)) == out  # second time: reused, not rewritten
    assert Path(out).stat().st_mtime_ns == stamp
    assert runtime.converted_checkpoint(out) == out


def test_sample_video_placed_once_and_never_over_a_users_file(tmp_path):
    src = ROOT / "assets" / "sample.mp4"
    inp = tmp_path / "input"
    path = R.place_sample_video(src, inp)
    assert path == str(inp / R.SAMPLE_NAME) and (inp / R.SAMPLE_NAME).read_bytes() == src.read_bytes()
    assert [p.name for p in inp.iterdir()] == [R.SAMPLE_NAME]  # no temporary file left
    umask = os.umask(0o022)
    os.umask(umask)
    assert (inp / R.SAMPLE_NAME).stat().st_mode & 0o777 == 0o666 & ~umask
    (inp / R.SAMPLE_NAME).write_bytes(b"the user's own clip")
    assert R.place_sample_video(src, inp) == path
    assert (inp / R.SAMPLE_NAME).read_bytes() == b"the user's own clip"


def test_sample_video_unwritable_input_folder_is_reported(tmp_path):
    blocker = tmp_path / "input"
    blocker.write_text("a file where the folder should be")
    assert R.place_sample_video(ROOT / "assets" / "sample.mp4", blocker) is None
