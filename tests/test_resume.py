"""A prompt-guided run resumed from a loop snapshot equals a run from the start (the basis of incremental
corrections): same frames, bit for bit, when only annotations from the snapshot's clip on change."""
import pytest
import torch

from univs_engine.api import load_model
from univs_engine.inference.core import ClipGeometry, FrameFeatures
from univs_engine.inference.vos import PromptedClipLoop
from univs_engine.presets import TaskSettings

L, HW = 20, (64, 64)


@pytest.fixture(scope="module")
def net():
    return load_model("small").net


def square(y, x, size=20):
    m = torch.zeros(1, *HW)
    m[0, y:y + size, x:x + size] = 1
    return m


def moving_squares(seed):
    """Two coloured squares moving over noise, normalised as the model expects."""
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(L, 3, *HW, generator=g) * 0.3
    for t in range(L):
        x[t, 0, 5:25, 5 + t:25 + t] = 1.0
        x[t, 2, 30:50, 30:50] = 1.0
    return (x - 0.45) / 0.25


def run(net, frames, annotations, resume=None, every=0, targets=2):
    settings = TaskSettings(clip_len=3, prompt_tokens=8, memory_frames=2)
    loop = PromptedClipLoop(net, settings, ClipGeometry(L, HW, HW, HW), generator=torch.Generator().manual_seed(0))
    loop.snapshot_every = every
    out = {f: logits.clone()
           for f, logits, _ in loop.run(lambda a, b: frames[a:b], targets, annotations, resume=resume)}
    return out, loop.snapshots


def test_resumed_run_equals_a_run_from_the_start(net):
    frames = moving_squares(1)
    first = {0: (torch.tensor([0, 1]), torch.cat([square(5, 5), square(30, 30)]))}
    cached, snaps = run(net, frames, first, every=4)
    assert [s.clip for s in snaps] == [0, 4, 8, 12, 16]
    corrected = {**first, 13: (torch.tensor([1]), square(32, 36, 12))}  # object 2 corrected on frame 13
    scratch, _ = run(net, frames, corrected)
    snap = max((s for s in snaps if s.clip <= 13 - 3 + 1), key=lambda s: s.clip)  # clips from 11 read frame 13
    assert snap.clip == 8
    resumed, _ = run(net, frames, corrected, resume=snap)
    assert sorted(resumed) == list(range(8, L))
    assert all(torch.equal(resumed[f], scratch[f]) for f in range(8, L))
    assert all(torch.equal(cached[f], scratch[f]) for f in range(8))  # earlier frames are reused as they are
    assert not torch.equal(cached[L - 1], scratch[L - 1])  # the correction did change later frames


def test_snapshots_do_not_alias_the_running_state(net):
    frames = moving_squares(2)
    ann = {0: (torch.tensor([0, 1]), torch.cat([square(5, 5), square(30, 30)]))}
    _, snaps = run(net, frames, ann, every=4)
    a, b = snaps[2].state, snaps[3].state
    assert a.end < b.end and a.logits.data_ptr() != b.logits.data_ptr()
    assert a.memory.tokens.data_ptr() != b.memory.tokens.data_ptr()
    with pytest.raises(ValueError, match="targets"):
        run(net, frames, {0: (torch.tensor([0]), square(5, 5))}, resume=snaps[1], targets=1)


def test_feature_batches_are_aligned(net):
    asked = []
    feats = FrameFeatures(net, lambda a, b: asked.append((a, b)) or torch.zeros(b - a, 3, *HW), 12, 3)
    feats.clip(7, 3)
    assert asked == [(5, 10)]  # the batch a run from frame 0 would encode
