"""Host synchronisations (counted on the CPU, not timed).

On a GPU every read of a device value by Python (``bool(t)``, ``float(t)``, ``.item()``, ``.tolist()``, ``.cpu()``,
``.numpy()``, ``nonzero``, boolean-mask indexing, ``unique``) waits for the device to finish. A TorchFunctionMode
follows which tensors would live on the device (the model's weights and embeddings, tensors moved with
``.to(device)`` or created with ``device=<a torch.device>``, and everything computed from them) and counts every
read of one outside ``inference.core.to_host`` (the loops' packed copy point), plus one per ``to_host`` call.
Host-side bookkeeping (numpy, tensors created without a device, ``.to("cpu")``) is not counted, as on a GPU.
"""
from __future__ import annotations

import collections

import numpy as np
import pytest
import torch
from torch.overrides import TorchFunctionMode

from univs_engine import api
from univs_engine.inference import core

READS = {"__bool__", "__float__", "__int__", "__index__", "item", "tolist", "cpu", "numpy", "__array__", "nonzero",
         "argwhere", "unique", "masked_select", "__format__", "__repr__"}
TO_HOST = {"cpu", "numpy", "tolist", "item", "__array__", "__bool__", "__float__", "__int__", "__index__"}
ON_DEVICE = "_univs_on_device"  # attribute set on tensors that would live on the device


def _tensors(obj):
    if isinstance(obj, torch.Tensor):
        yield obj
    elif isinstance(obj, (list, tuple)):
        for o in obj:
            yield from _tensors(o)
    elif isinstance(obj, dict):
        for o in obj.values():
            yield from _tensors(o)


def _is_read(func, args) -> bool:
    name = getattr(func, "__name__", "")
    if name in READS:
        return True
    if name == "__getitem__" and len(args) > 1:  # boolean-mask indexing has a data-dependent shape
        index = args[1] if isinstance(args[1], tuple) else (args[1],)
        return any(isinstance(i, torch.Tensor) and i.dtype == torch.bool for i in index)
    return False


def _device_target(func, args, kwargs) -> bool | None:
    """True when the call places its result on a device, False for an explicit "cpu", None when it says nothing."""
    specs = [kwargs.get("device")]
    if getattr(func, "__name__", "") == "to":
        specs += [a for a in args[1:] if isinstance(a, (str, torch.device))]
    specs = [s for s in specs if s is not None]
    if not specs:
        return None
    return not any(isinstance(s, str) and s == "cpu" for s in specs)


def mark_on_device(*objs) -> None:
    """Mark tensors (and the parameters and buffers of modules) as living on the device."""
    for obj in objs:
        if isinstance(obj, torch.nn.Module):
            for t in (*obj.parameters(), *obj.buffers()):
                setattr(t, ON_DEVICE, True)
        else:
            for t in _tensors(obj):
                setattr(t, ON_DEVICE, True)


def mark_model(model: api.UniVSModel) -> None:
    mark_on_device(model.net, model.class_embeddings)
    if model.text is not None and hasattr(model.text, "encoder"):
        mark_on_device(model.text.encoder)


class HostReads(TorchFunctionMode):
    """Counts host reads of device tensors by name; `inside_copy` marks the loops' own copy point (counted once)."""

    def __init__(self):
        super().__init__()
        self.counts = collections.Counter()
        self.inside_copy = False

    def on_read(self, func) -> None:
        self.counts[getattr(func, "__name__", "?")] += 1

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        from_device = any(getattr(t, ON_DEVICE, False) for t in _tensors((args, kwargs)))
        target = _device_target(func, args, kwargs)
        name = getattr(func, "__name__", "")
        if from_device and not self.inside_copy and (_is_read(func, args) or target is False):
            self.on_read(func)
        out = func(*args, **kwargs)
        if from_device and (name == "__setitem__" or (name.endswith("_") and not name.startswith("__"))):
            setattr(args[0], ON_DEVICE, True)  # written in place from device values: on a GPU it is a device tensor
        if target or (target is None and from_device and name not in TO_HOST):
            for t in _tensors(out):
                setattr(t, ON_DEVICE, True)
        return out


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


DEV = torch.device("cpu")  # inside the mode, a torch.device marks what is created with it (see _device_target)


def on_device(t: torch.Tensor) -> torch.Tensor:
    mark_on_device(t)
    return t


def test_the_counter_sees_reads_of_device_values_and_copies(counted):
    """The instrument can fail: it sees each kind of read of a device value and counts a to_host call once;
    host tensors, and device values after the packed copy, are read freely."""
    x, host = on_device(torch.arange(6.0)), torch.arange(6.0)
    with counted:
        bool(x.any()), float(x[0]), x.tolist(), x.cpu(), x[x > 2], torch.nonzero(x), core.to_host(x, x > 1)
        y = (x * 2).to(torch.float16)  # derived values stay on the device ...
        float(y.sum()), y.to("cpu")
        bool(host.any()), float(host[0]), host.tolist(), host[host > 2]  # ... host values are not counted
        z = host.to(DEV)
        int(z[1])
        host[:2] = x[:2]  # written from device values in place: a device tensor now
        host.tolist()
        copied, _ = core.to_host(x, x > 1)
        float(copied[0])
    assert {k: counted.counts[k] for k in ("__bool__", "__float__", "tolist", "cpu", "__getitem__", "nonzero")} == \
        {"__bool__": 1, "__float__": 2, "tolist": 2, "cpu": 1, "__getitem__": 1, "nonzero": 1}
    assert counted.counts["to"] == 1 and counted.counts["__int__"] == 1 and counted.counts["to_host"] == 2
    assert sum(counted.counts.values()) == 12



@pytest.fixture(scope="module")
def model():
    m = api.load_model("small")
    mark_model(m)
    return m


def test_memory_pool_is_read_and_written_without_host_reads(counted):
    """Appending slots (which saves first-appearance slots about to be dropped), writing and the ProCA read."""
    from univs_engine.inference.memory import PromptMemory

    N, R, C = 3, 4, 8
    mem = PromptMemory(on_device(torch.randn(N, R, 2, C)), on_device(torch.randn(N, R, 2, C)), keep=3)
    mem.set_first_frames(on_device(torch.tensor([0, 2, -1])))
    with counted:
        for step in range(6):
            mem.append(1)
            written = torch.tensor([True, step % 2 == 0, True], device=DEV)
            mem.write(written, torch.randn(N, R, C, device=DEV), torch.randn(N, R, C, device=DEV), -1)
            tokens, pe = mem.proca_tokens(2)
    assert sum(counted.counts.values()) == 0, dict(counted.counts)
    assert tokens.shape == (N, 3 * R, C) and mem.start > 0  # slots were dropped: the saved first slots were read


def test_mask_prompt_encoding_reads_the_host_once(counted):
    """One copy of the cell / point counts (the sizes the official CPU permutations are drawn over), whatever N."""
    from univs_engine.modeling.prompt_encoder import sample_mask_prompts

    g = torch.Generator().manual_seed(0)
    masks = (torch.rand(4, 64, 96, generator=g) > 0.7).float()
    masks[2] = 0  # an empty target: its tokens fall back, no draw
    feat, pos, masks, phase = map(on_device, (torch.randn(16, 8, 12), torch.randn(16, 8, 12), masks, torch.tensor(0.1)))
    with counted:
        out = sample_mask_prompts(feat, pos, masks, 6, phase,
                                  generator=torch.Generator().manual_seed(1))
    assert dict(counted.counts) == {"tolist": 1} and out.tokens.shape == (4, 6, 16)


def test_each_output_frame_leaves_the_device_in_one_copy(model, counted):
    """Prompt-guided tracking: one to_host per finished frame (masks and confidences of every target together)."""
    video = np.repeat(np.random.default_rng(0).integers(60, 120, (1, 96, 128, 3), dtype=np.uint8), 7, 0)
    video[:, 20:50, 10:40] = (230, 40, 40)
    with counted:
        tracks = api.track(model, video, [api.Prompt(1, 0, box=(10, 20, 40, 50)), api.Prompt(2, 0, points=[(100, 70)])])
    assert counted.counts["to_host"] == 7 and len(tracks) == 2
