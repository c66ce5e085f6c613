"""torch.compile for the three model stages: image encoder, pixel decoder, mask decoder.

Each stage compiles as one graph (``fullgraph=True``) at static shapes (``dynamic=False``):

* frames come padded to the run's ClipGeometry size, so the encoders see one frame size per video (a
  new size, or the shorter last batch of frames, compiles once more);
* the decoder's prompt count is padded up to a bucket (1, 2, 4, ... 64, then multiples of 64). Padding
  repeats prompt 0 and is marked in ``PromptQueries.valid``: the self-attention mask gives each padded
  prompt a group of its own, and every other decoder step treats queries independently, so the real
  prompts' outputs do not depend on the padding. Outputs are trimmed back to the real prompts.

On CUDA, ``mode="reduce-overhead"`` replays the compiled graphs as CUDA graphs (the decoder is
launch-bound, so this is where most of the gain is). A replay overwrites the previous outputs, and the
clip loops keep encoder features and decoder outputs across calls, so in that mode every output is
copied out of the graph pool before it is returned.

    compile_model(model, mode_for(device))   # in place; the clip loops need no change
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable, Sequence

import torch
import torch._dynamo

from .modeling.mask_decoder import DecoderOutput, PromptQueries

PROMPT_BUCKETS = (1, 2, 4, 8, 16, 32, 64)
CUDA_GRAPH_MODES = ("reduce-overhead", "max-autotune")
# per stage: frame sizes x batch sizes, prompt buckets x decoder variants; torch's default (8) would fall
# back to eager after a few videos
RECOMPILE_LIMIT = 64


def enabled(device: torch.device | str, requested: bool | None = None) -> bool:
    """Whether to compile: an explicit True/False wins; None (the default) compiles on CUDA when Triton
    (inductor's GPU backend) is installed, and never on CPU or MPS (inductor works on CPU, but compiling
    costs minutes there and gains little)."""
    if requested is not None:
        return bool(requested)
    if torch.device(device).type != "cuda":
        return False
    from torch.utils._triton import has_triton
    return has_triton()


def mode_for(device: torch.device | str) -> str:
    """torch.compile mode: CUDA graphs on CUDA, plain inductor elsewhere."""
    return "reduce-overhead" if torch.device(device).type == "cuda" else "default"


def bucket(n: int, buckets: Sequence[int] = PROMPT_BUCKETS) -> int:
    """Smallest bucket >= n; past the largest, the next multiple of it."""
    for b in buckets:
        if n <= b:
            return b
    top = buckets[-1]
    return -(-n // top) * top


def pad_prompts(prompts: PromptQueries, size: int) -> PromptQueries:
    """Prompts [Qp, ...] -> [size, ...]: rows past Qp repeat prompt 0 and are marked invalid."""
    n = len(prompts)
    rows = torch.arange(size, device=prompts.content.device)  # built on the device: no host copy, no sync
    index = torch.where(rows < n, rows, 0)
    take = lambda t: None if t is None else t.index_select(0, index.to(t.device))  # noqa: E731
    return dataclasses.replace(prompts, content=take(prompts.content), pos=take(prompts.pos),
                               dense=take(prompts.dense), dense_pos=take(prompts.dense_pos),
                               sentence=take(prompts.sentence), valid=rows < n)


def trim(out: DecoderOutput, n: int, text: bool) -> DecoderOutput:
    """Drop the padded prompts' rows (and, for text prompts, their logit and reid columns)."""
    keep = out.num_learnable + n
    rows = lambda t: None if t is None else t[:keep]  # noqa: E731
    logits = out.pred_logits
    logits = logits[:keep, :n] if text and logits is not None else rows(logits)
    per_layer = None if out.embds_per_layer is None else out.embds_per_layer[:, :keep]
    reid = None if out.pred_reid is None else out.pred_reid[:keep, :n]
    return dataclasses.replace(out, pred_masks=rows(out.pred_masks), pred_embds=rows(out.pred_embds),
                               pred_logits=logits, pred_reid=reid, embds_per_layer=per_layer)


def _own(x: Any) -> Any:
    """A copy of every tensor in x (tensor, dict, list, tuple or dataclass of them)."""
    if isinstance(x, torch.Tensor):
        return x.clone()
    if isinstance(x, dict):
        return {k: _own(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return type(x)(_own(v) for v in x)
    if dataclasses.is_dataclass(x):
        return dataclasses.replace(x, **{f.name: _own(getattr(x, f.name)) for f in dataclasses.fields(x)})
    return x


class CompiledStage:
    """fn through torch.compile(fullgraph=True, dynamic=False): a graph break is an error, not a slow path."""

    def __init__(self, fn: Callable, mode: str | None = None):
        self.fn = torch.compile(fn, fullgraph=True, dynamic=False, mode=mode)
        self.graphs = mode in CUDA_GRAPH_MODES

    def __call__(self, *args, **kwargs):
        if not self.graphs:
            return self.fn(*args, **kwargs)
        torch.compiler.cudagraph_mark_step_begin()
        return _own(self.fn(*args, **kwargs))


class BucketedDecoder:
    """VideoMaskDecoder.forward with the prompt count padded to a bucket (same signature)."""

    def __init__(self, forward: Callable[..., DecoderOutput], buckets: Sequence[int] = PROMPT_BUCKETS):
        self.forward, self.buckets = forward, tuple(buckets)

    def __call__(self, levels, mask_features, prompts: PromptQueries | None = None, *args, **kwargs):
        if prompts is None or len(prompts) == 0:
            return self.forward(levels, mask_features, prompts, *args, **kwargs)
        n = len(prompts)
        out = self.forward(levels, mask_features, pad_prompts(prompts, bucket(n, self.buckets)), *args, **kwargs)
        return trim(out, n, prompts.kind == "text")


def _stages(model) -> list[tuple[torch.nn.Module, str]]:
    """(module, method name) of the three stages, as the clip loops reach them (UniVS.encode_frames and
    UniVS.decoder)."""
    return [(model.backbone, "forward"), (model.sem_seg_head.pixel_decoder, "forward_features"),
            (model.decoder, "forward")]


def compile_model(model, mode: str | None = None, buckets: Sequence[int] = PROMPT_BUCKETS):
    """Compile a UniVS's three stages in place (an instance attribute shadows each stage's method, so
    weights, state-dict keys and every caller stay as they are) and return the model. Move the model to
    its device and dtype first. mode: a torch.compile mode, see mode_for. Calling it again is a no-op."""
    if is_compiled(model):
        return model
    limit = torch._dynamo.config.recompile_limit
    torch._dynamo.config.recompile_limit = max(limit, RECOMPILE_LIMIT)
    (backbone, _), (pixel_decoder, _), (decoder, _) = _stages(model)
    backbone.forward = CompiledStage(backbone.forward, mode)
    pixel_decoder.forward_features = CompiledStage(pixel_decoder.forward_features, mode)
    decoder.forward = BucketedDecoder(CompiledStage(decoder.forward, mode), buckets)
    return model


def is_compiled(model) -> bool:
    return any(name in vars(module) for module, name in _stages(model))


def uncompile(model):
    """Undo compile_model (the compiled code is dropped with the wrappers); returns the model."""
    for module, name in _stages(model):
        vars(module).pop(name, None)
    return model
