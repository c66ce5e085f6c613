"""nodes/runtime.py without ComfyUI: the ModelPatcher wrap says why it fails, and the prompt editor's frame
cache is keyed on the frames' content and bounded."""
from __future__ import annotations

import logging
import os
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import load_pack  # noqa: E402

load_pack()
from univs_pack.nodes import runtime as R  # noqa: E402


# ============================================================================================== wrap_model
def _model():
    return SimpleNamespace(net=torch.nn.Linear(2, 2), text=SimpleNamespace(encoder=torch.nn.Linear(2, 2)))


class _Patcher:
    def __init__(self, model, load_device, offload_device):
        self.model, self.load_device, self.offload_device = model, load_device, offload_device


MM = SimpleNamespace(unet_offload_device=lambda: torch.device("cpu"))


def test_wrap_model_wraps_the_network_and_the_text_encoder(caplog):
    with caplog.at_level(logging.WARNING, logger="univs"):
        p = R.wrap_model(_model(), torch.device("cpu"), SimpleNamespace(ModelPatcher=_Patcher), MM)
    assert isinstance(p, _Patcher) and isinstance(p.model.net, torch.nn.Linear)
    assert isinstance(p.model.text_encoder, torch.nn.Linear) and not caplog.records


def test_wrap_model_failure_is_logged_with_its_cause(caplog):
    """It returned None without a word: the model then escaped ComfyUI's memory manager unseen."""

    def broken(*_a, **_k):
        raise TypeError("ModelPatcher() got an unexpected keyword argument 'load_device'")

    with caplog.at_level(logging.WARNING, logger="univs"):
        assert R.wrap_model(_model(), torch.device("cpu"), SimpleNamespace(ModelPatcher=broken), MM) is None
    (rec,) = caplog.records
    assert rec.levelno == logging.WARNING and rec.name == "univs"
    msg = rec.getMessage()
    assert "not registered with ComfyUI's memory manager" in msg
    assert "TypeError: ModelPatcher() got an unexpected keyword argument 'load_device'" in msg


def test_wrap_model_without_comfy_model_patcher_says_so(caplog):
    with caplog.at_level(logging.WARNING, logger="univs"):
        assert R.wrap_model(_model(), torch.device("cpu"), None, MM) is None
    assert "comfy.model_patcher is not available" in caplog.text


# ============================================================================================== editor frames
def _clip(T=5, H=24, W=32, seed=0) -> torch.Tensor:
    return torch.from_numpy(np.random.default_rng(seed).random((T, H, W, 3), dtype=np.float32))


def _files(tmp_path) -> list[str]:
    return sorted(os.listdir(tmp_path / R.EDITOR_SUBFOLDER))


def test_editor_frames_lists_every_frame_with_the_video_size(tmp_path):
    ui = R.editor_frames(_clip(T=3, H=40, W=60), str(tmp_path))
    assert [f["frame"] for f in ui["univs_frames"]] == [0, 1, 2] and ui["univs_size"] == [60, 40, 3]
    for f in ui["univs_frames"]:
        assert f["subfolder"] == R.EDITOR_SUBFOLDER and f["type"] == "temp"
        assert (tmp_path / f["subfolder"] / f["filename"]).is_file()
    ui = R.editor_frames(_clip(T=10), str(tmp_path), max_frames=4)
    assert [f["frame"] for f in ui["univs_frames"]] == [0, 3, 6, 9]


def test_editor_frames_of_clips_differing_in_a_middle_frame_do_not_collide(tmp_path):
    """The key was (frame count, size, mean of the first and last frame): a clip differing from an earlier one
    only in a middle frame was shown the earlier clip's picture."""
    a = _clip(H=1, W=1).expand(5, 24, 32, 3).contiguous()  # one colour per frame: the JPEGs are exact enough
    b = a.clone()
    b[2] = 1.0 - b[2]  # only the middle frame differs (the first and last frames, and their means, are equal)
    fa = R.editor_frames(a, str(tmp_path))["univs_frames"]
    fb = R.editor_frames(b, str(tmp_path))["univs_frames"]
    names_a, names_b = [f["filename"] for f in fa], [f["filename"] for f in fb]
    assert names_a[2] != names_b[2]
    assert names_a[:2] + names_a[3:] == names_b[:2] + names_b[3:]  # identical frames are encoded once
    for clip, frames in ((a, fa), (b, fb)):  # each file shows its own clip's frame
        shown = np.asarray(Image.open(tmp_path / R.EDITOR_SUBFOLDER / frames[2]["filename"]), np.float32)
        assert np.abs(shown - clip[2].numpy() * 255).max() < 4
    again = R.editor_frames(a.clone(), str(tmp_path))["univs_frames"]
    assert [f["filename"] for f in again] == names_a  # the same content hits the same files


def test_editor_frame_cache_is_bounded_and_keeps_the_latest_frames(tmp_path):
    shown = []
    for seed in range(6):
        frames = R.editor_frames(_clip(T=3, seed=seed), str(tmp_path), keep=7)["univs_frames"]
        shown.append({f["filename"] for f in frames})
        assert len(_files(tmp_path)) <= 7
        assert shown[-1] <= set(_files(tmp_path))  # the frames the editor is about to load are all there
    assert not shown[0] & set(_files(tmp_path))  # the least recently used went first
    # a clip used again is the most recent one: it stays while newer clips come and go
    R.editor_frames(_clip(T=3, seed=4), str(tmp_path), keep=7)
    R.editor_frames(_clip(T=3, seed=10), str(tmp_path), keep=7)
    assert shown[4] <= set(_files(tmp_path)) and len(_files(tmp_path)) <= 7


def test_editor_frames_of_one_call_are_never_evicted_by_it(tmp_path):
    frames = R.editor_frames(_clip(T=5), str(tmp_path), keep=2)["univs_frames"]
    assert {f["filename"] for f in frames} == set(_files(tmp_path))


@pytest.mark.parametrize("channels", [1, 4])
def test_editor_frames_take_grey_and_rgba_batches(tmp_path, channels):
    ui = R.editor_frames(torch.rand(2, 16, 20, channels), str(tmp_path))
    assert len(ui["univs_frames"]) == 2


def test_reuse_records_follow_the_model_and_video_objects_and_are_bounded():
    import gc

    import torch

    model_a, model_b = torch.nn.Linear(1, 1), torch.nn.Linear(1, 1)
    video_a, video_b, video_c = torch.zeros(2, 4, 4, 3), torch.zeros(2, 4, 4, 3), torch.zeros(2, 4, 4, 3)
    first = R.reuse_record(model_a, video_a)
    assert R.reuse_record(model_a, video_a) is first                  # the same objects: the same record
    assert R.reuse_record(model_b, video_a) is not first              # equal content is not enough
    assert R.reuse_record(model_a, video_b) is not first
    R.reuse_record(model_a, video_c)
    assert len(R._reuse) <= R.REUSE_ENTRIES and R.reuse_record(model_a, video_a) is not first  # evicted
    held = R.reuse_record(model_a, video_b)
    del video_b
    gc.collect()  # a dead input never matches, even if a new object takes its address
    assert all(R.reuse_record(model_a, torch.zeros(1)) is not held for _ in range(3))
