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
         "argwhere", "unique", "masked_select", "__format__", "__repr__",
         "bincount"}  # CUDA bincount reads the largest value to size its output
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
    if name in ("__getitem__", "__setitem__") and len(args) > 1:  # a boolean mask is turned into indices first
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


def count_copies(mode: HostReads, patch) -> HostReads:
    """Make each core.to_host call count as one read of `mode` (reads inside it are the copy itself)."""
    to_host = core.to_host

    def copy(*tensors):
        mode.counts["to_host"] += 1
        mode.inside_copy = True
        try:
            return to_host(*tensors)
        finally:
            mode.inside_copy = False

    patch.setattr(core, "to_host", copy)
    return mode


@pytest.fixture
def counted(monkeypatch):
    return count_copies(HostReads(), monkeypatch)


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


def test_mask_prompt_encoding_reads_the_host_once_or_never(counted):
    """Permutation draws: one copy of the cell / point counts (the sizes they are drawn over), whatever N; device
    draws: none."""
    from univs_engine.modeling.prompt_encoder import DeviceDraw, sample_mask_prompts

    g = torch.Generator().manual_seed(0)
    masks = (torch.rand(4, 64, 96, generator=g) > 0.7).float()
    masks[2] = 0  # an empty target: its tokens fall back, no draw
    feat, pos, masks, phase = map(on_device, (torch.randn(16, 8, 12), torch.randn(16, 8, 12), masks, torch.tensor(0.1)))
    with counted:
        out = sample_mask_prompts(feat, pos, masks, 6, phase, generator=torch.Generator().manual_seed(1))
    assert dict(counted.counts) == {"tolist": 1} and out.tokens.shape == (4, 6, 16)
    with counted:
        out = sample_mask_prompts(feat, pos, masks, 6, phase, draw=DeviceDraw(torch.Generator().manual_seed(1)))
    assert dict(counted.counts) == {"tolist": 1} and out.tokens.shape == (4, 6, 16)


def clip(frames: int) -> np.ndarray:
    """A textured background with two shapes moving in opposite directions, 96x128."""
    v = np.repeat(np.random.default_rng(0).integers(60, 120, (1, 96, 128, 3), dtype=np.uint8), frames, 0)
    for t in range(frames):
        v[t, 20:50, 10 + 3 * t:40 + 3 * t] = (230, 40, 40)
        v[t, 50:80, 90 - 2 * t:115 - 2 * t] = (40, 200, 60)
    return v


TASKS = {  # every task loop; the prompt-guided ones with each kind of visual prompt
    "vos (boxes)": lambda m, v: api.track(m, v, [api.Prompt(1, 0, box=(10, 20, 40, 50)),
                                                 api.Prompt(2, 0, box=(90, 50, 115, 80))]),
    "vos (mask + click)": lambda m, v: api.track(m, v, [api.Prompt(1, 0, mask=v[0, :, :, 0] > 200),
                                                        api.Prompt(2, 0, points=[(100, 70)])]),
    "pvos": lambda m, v: api.track(m, v, [api.Prompt(1, 0, box=(10, 20, 40, 50)),
                                          api.Prompt(2, 0, mask=v[0, :, :, 1] < 200, label="sky")],
                                   api.RunOptions(settings="pvos")),
    "refvos": lambda m, v: api.track(m, v, [api.Prompt(1, 0, text="the red square moving right")]),
    "vis": lambda m, v: api.segment(m, v, "instance"),
    "vss": lambda m, v: api.segment(m, v, "semantic"),
    "vps": lambda m, v: api.segment(m, v, "panoptic"),
}
SHORT, LONG = 6, 16


def device_draws(monkeypatch) -> None:
    """Prompt cells drawn as on a GPU (the CPU's permutation draws read two counts per encoding: free there)."""
    from univs_engine.modeling import prompt_encoder

    monkeypatch.setattr(prompt_encoder, "default_draw",
                        lambda device, generator=None: prompt_encoder.DeviceDraw(generator))


def run_counted(mode: HostReads, model, task: str, frames: int, monkeypatch) -> HostReads:
    """Run `task` on `frames` frames under `mode`, counting core.to_host calls as one read each."""
    with monkeypatch.context() as patch:
        count_copies(mode, patch)
        with mode:
            TASKS[task](model, clip(frames))
    return mode


@pytest.mark.parametrize("task", list(TASKS))
def test_every_loop_leaves_the_device_about_once_per_frame(model, task, monkeypatch):
    """Per frame (the difference of a 16- and a 6-frame run, so one-time setup cancels): nothing is read outside
    the packed copy point. Prompt-guided loops and VSS copy once per frame; VIS and VPS once per clip (stride 1:
    the Hungarian assignment runs on the host, as the official) plus once per 10-frame output window, plus once
    more in a clip with new candidates to check against the tracked entities."""
    device_draws(monkeypatch)
    short, long = (run_counted(HostReads(), model, task, f, monkeypatch).counts for f in (SHORT, LONG))
    other = {k: long[k] - short[k] for k in long if k != "to_host" and long[k] != short[k]}
    assert other == {}, other
    if task.startswith(("vos", "pvos", "refvos", "vss")):
        assert long["to_host"] == LONG, dict(long)  # other reads (turning clicks into a mask ...) are per run
    else:
        assert (long["to_host"] - short["to_host"]) / (LONG - SHORT) <= 1.2, (dict(short), dict(long))


def test_the_permutation_draws_are_the_cpus_only_extra_reads(model, monkeypatch):
    """Without device draws (the CPU default) a box-prompted run also reads the counts of each encoding."""
    short, long = (run_counted(HostReads(), model, "vos (boxes)", f, monkeypatch).counts for f in (SHORT, LONG))
    growth = {k: long[k] - short[k] for k in long if long[k] != short[k]}
    assert growth == {"to_host": LONG - SHORT, "tolist": 2 * (LONG - SHORT)}, (dict(short), dict(long))
