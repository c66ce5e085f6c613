"""Host synchronisations (counted on the CPU, not timed).

On a GPU every read of a device value by Python (``bool(t)``, ``float(t)``, ``.item()``, ``.tolist()``, ``.cpu()``,
``.numpy()``, ``nonzero``, boolean-mask indexing, ``unique``) waits for the device to finish. A TorchFunctionMode
counts every such read outside ``inference.core.to_host`` (the loops' packed copy point) plus one per ``to_host``
call. On the CPU it cannot tell a device tensor from host-side state, so whole-loop counts are upper bounds (printed
per task by tools/bench_syncs.py); the parts asserted here are the ones that only touch device tensors.
"""
from __future__ import annotations

import collections

import numpy as np
import pytest
import torch
from torch.overrides import TorchFunctionMode

from univs_engine import api
from univs_engine.inference import core

READS = {"__bool__", "__float__", "__int__", "__index__", "item", "tolist", "cpu", "numpy", "nonzero", "argwhere",
         "unique", "masked_select"}


def _is_read(func, args, kwargs) -> bool:
    name = getattr(func, "__name__", "")
    if name in READS:
        return True
    if name == "__getitem__" and len(args) > 1:  # boolean-mask indexing has a data-dependent shape
        index = args[1] if isinstance(args[1], tuple) else (args[1],)
        return any(isinstance(i, torch.Tensor) and i.dtype == torch.bool for i in index)
    return False  # .to(device) is not counted: on the CPU a copy to the host cannot be told from one to the device


class HostReads(TorchFunctionMode):
    """Counts host reads of tensor values by name; `copy` marks the loops' own copy point (counted once)."""

    def __init__(self):
        super().__init__()
        self.counts = collections.Counter()
        self.inside_copy = False

    def __torch_function__(self, func, types, args=(), kwargs=None):
        if not self.inside_copy and _is_read(func, args, kwargs):
            self.counts[getattr(func, "__name__", "?")] += 1
        return func(*args, **(kwargs or {}))


@pytest.fixture
def counted(monkeypatch):
    mode = HostReads()
    to_host = core.to_host

    def copy(*tensors):
        mode.counts["to_host"] += 1
        mode.inside_copy = True
        try:
            return to_host(*tensors)
        finally:
            mode.inside_copy = False

    monkeypatch.setattr(core, "to_host", copy)
    return mode


def test_the_counter_sees_reads_and_copies(counted):
    """The instrument can fail: it sees each kind of read and counts a to_host call once."""
    x = torch.arange(6.0)
    with counted:
        bool(x.any()), float(x[0]), x.tolist(), x.cpu(), x[x > 2], torch.nonzero(x), core.to_host(x, x > 1)
    assert {k: counted.counts[k] for k in ("__bool__", "__float__", "tolist", "cpu", "__getitem__", "nonzero")} == \
        dict.fromkeys(("__bool__", "__float__", "tolist", "cpu", "__getitem__", "nonzero"), 1)
    assert counted.counts["to_host"] == 1 and sum(counted.counts.values()) == 7



@pytest.fixture(scope="module")
def model():
    return api.load_model("small")


def test_memory_pool_is_read_and_written_without_host_reads(counted):
    """Appending slots (which saves first-appearance slots about to be dropped), writing and the ProCA read."""
    from univs_engine.inference.memory import PromptMemory

    N, R, C = 3, 4, 8
    mem = PromptMemory(torch.randn(N, R, 2, C), torch.randn(N, R, 2, C), keep=3)
    mem.set_first_frames(torch.tensor([0, 2, -1]))
    with counted:
        for step in range(6):
            mem.append(1)
            mem.write(torch.tensor([True, step % 2 == 0, True]), torch.randn(N, R, C), torch.randn(N, R, C), -1)
            tokens, pe = mem.proca_tokens(2)
    assert sum(counted.counts.values()) == 0, dict(counted.counts)
    assert tokens.shape == (N, 3 * R, C) and mem.start > 0  # slots were dropped: the saved first slots were read


def test_mask_prompt_encoding_reads_the_host_once(counted):
    """One copy of the cell / point counts (the sizes the official CPU permutations are drawn over), whatever N."""
    from univs_engine.modeling.prompt_encoder import sample_mask_prompts

    g = torch.Generator().manual_seed(0)
    masks = (torch.rand(4, 64, 96, generator=g) > 0.7).float()
    masks[2] = 0  # an empty target: its tokens fall back, no draw
    with counted:
        out = sample_mask_prompts(torch.randn(16, 8, 12), torch.randn(16, 8, 12), masks, 6, torch.tensor(0.1),
                                  generator=torch.Generator().manual_seed(1))
    assert dict(counted.counts) == {"tolist": 1} and out.tokens.shape == (4, 6, 16)


def test_each_output_frame_leaves_the_device_in_one_copy(model, counted):
    """Prompt-guided tracking: one to_host per finished frame (masks and confidences of every target together)."""
    video = np.repeat(np.random.default_rng(0).integers(60, 120, (1, 96, 128, 3), dtype=np.uint8), 7, 0)
    video[:, 20:50, 10:40] = (230, 40, 40)
    with counted:
        tracks = api.track(model, video, [api.Prompt(1, 0, box=(10, 20, 40, 50)), api.Prompt(2, 0, points=[(100, 70)])])
    assert counted.counts["to_host"] == 7 and len(tracks) == 2
