"""Multi-scale deformable attention sampling core as a Triton kernel (forward only).

Same signature and semantics as :func:`.ms_deform_attn.ms_deform_attn_core`: bilinear sampling with
``align_corners=False``, each corner tap outside its level's map reading zero (``F.grid_sample`` zeros
padding), weighted by the attention weights and summed over levels and points. Values may be fp32, fp16 or
bf16; sums are kept in fp32 and the result has the values' dtype.

Triton is optional: importing this module never fails without it, :func:`triton_available` says whether the
kernel can run on a device (a CUDA GPU, or CPU tensors under ``TRITON_INTERPRET=1``). The launch is a custom op
(``torch.ops.univs.ms_deform_attn_triton``), so ``torch.compile`` keeps it as one node, fullgraph included.
"""
from __future__ import annotations

import os
import warnings
from typing import Sequence, Tuple, Union

import torch

try:  # optional dependency: the kernel is only built and launched when Triton is importable
    import triton
    import triton.language as tl
except ImportError:  # pragma: no cover - depends on the environment
    triton = tl = None

__all__ = ["ms_deform_attn_triton", "ms_deform_attn_triton_or_grid_sample", "triton_available"]

SpatialShapes = Union[torch.Tensor, Sequence[Tuple[int, int]]]
BLOCK_Q = 64  # queries per program: one (query block, batch * head) pair per program


def _interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0").strip().lower() in ("1", "true", "yes", "on")


def triton_available(device: torch.device | str) -> bool:
    """True when the kernel can run on `device`: Triton is importable and the device is a CUDA GPU Triton
    supports (compute capability 7.0 or newer, or ROCm), or ``TRITON_INTERPRET=1`` is set (the interpreter runs
    it on CPU tensors)."""
    if triton is None:
        return False
    if _interpreting():
        return True
    device = torch.device(device)
    if device.type != "cuda":
        return False
    return torch.version.hip is not None or torch.cuda.get_device_capability(device)[0] >= 7


def _sample_kernel(value_ptr, shapes_ptr, starts_ptr, loc_ptr, attn_ptr, out_ptr, n_queries, n_tokens, n_heads,
                   N_LEVELS: tl.constexpr, N_POINTS: tl.constexpr, D: tl.constexpr, BLOCK_D: tl.constexpr,
                   BLOCK_Q: tl.constexpr):
    """Program (query block, b * heads + h): out[b, q, h, :] for BLOCK_Q queries q.

    value [B, S, heads, D]; shapes [L, 2] (H, W) and starts [L] int32; loc [B, Q, heads, L, P, 2];
    attn [B, Q, heads, L, P]; out [B, Q, heads, D]. All contiguous.
    """
    bh = tl.program_id(1)
    b = bh // n_heads
    h = bh % n_heads
    q = tl.program_id(0) * BLOCK_Q + tl.arange(0, BLOCK_Q)
    q_ok = q < n_queries
    c = tl.arange(0, BLOCK_D)
    c_ok = (c < D)[None, :]
    row = (b.to(tl.int64) * n_queries + q) * n_heads + h  # flat (b, q, h) index of loc, attn and out
    first = row * (N_LEVELS * N_POINTS)  # index of (b, q, h, level 0, point 0) in attn
    value_base = value_ptr + b.to(tl.int64) * n_tokens * n_heads * D + h * D + c[None, :]
    token_stride = n_heads * D
    # tl.full, not tl.zeros: only builtins (no @jit helpers of triton.language), so the interpreter can run the
    # kernel even when triton.language was imported before TRITON_INTERPRET was set
    acc = tl.full((BLOCK_Q, BLOCK_D), 0.0, tl.float32)
    for lvl in range(N_LEVELS):  # runtime loops: unrolling all L * P * 4 taps makes a huge, slow-to-build kernel
        height = tl.load(shapes_ptr + 2 * lvl)
        width = tl.load(shapes_ptr + 2 * lvl + 1)
        start = tl.load(starts_ptr + lvl)
        for p in range(N_POINTS):
            k = first + (lvl * N_POINTS + p)
            x = tl.load(loc_ptr + 2 * k, mask=q_ok, other=0.0).to(tl.float32)
            y = tl.load(loc_ptr + 2 * k + 1, mask=q_ok, other=0.0).to(tl.float32)
            a = tl.load(attn_ptr + k, mask=q_ok, other=0.0).to(tl.float32)
            # pixel coordinates (centres at i + 0.5); clamped so that far-away samples, whose taps are all
            # outside anyway, still convert to int safely
            px = tl.minimum(tl.maximum(x * width - 0.5, -2.0), width + 1.0)
            py = tl.minimum(tl.maximum(y * height - 0.5, -2.0), height + 1.0)
            x0f = tl.floor(px)
            y0f = tl.floor(py)
            fx = px - x0f
            fy = py - y0f
            x0 = x0f.to(tl.int32)
            y0 = y0f.to(tl.int32)
            # per-axis validity of the taps at x0 / x0 + 1 and y0 / y0 + 1; the attention weight rides on y
            x_in = ((x0 >= 0) & (x0 < width), (x0 >= -1) & (x0 < width - 1))
            y_in = (q_ok & (y0 >= 0) & (y0 < height), q_ok & (y0 >= -1) & (y0 < height - 1))
            wx = (1.0 - fx, fx)
            wy = (a * (1.0 - fy), a * fy)
            corner_ptr = value_base + ((start + y0 * width + x0) * token_stride)[:, None]
            for dy in tl.static_range(2):
                for dx in tl.static_range(2):
                    ok = (x_in[dx] & y_in[dy])[:, None] & c_ok
                    v = tl.load(corner_ptr + (dy * width + dx) * token_stride, mask=ok, other=0.0)
                    acc += (wy[dy] * wx[dx])[:, None] * v.to(tl.float32)
    tl.store(out_ptr + row[:, None] * D + c[None, :], acc.to(out_ptr.dtype.element_ty), mask=q_ok[:, None] & c_ok)


_KERNELS: dict = {}


def _kernel():
    """The jitted kernel, built on first use; one per interpreter setting because ``triton.jit`` reads
    ``TRITON_INTERPRET`` when it wraps the function."""
    key = _interpreting()
    if key not in _KERNELS:
        # the token and query counts vary with the frame size: not specialising on them keeps one compiled
        # kernel per model (levels, points, head width) instead of one per video resolution
        _KERNELS[key] = triton.jit(_sample_kernel, do_not_specialize=["n_queries", "n_tokens"])
    return _KERNELS[key]


_TABLES: dict = {}


def _level_tables(pairs: tuple, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """[L, 2] int32 (H, W) and [L] int32 start offsets of each level in the flattened tokens.

    Cached per (shapes, device): every encoder layer of every frame reuses them without a host-to-device copy.
    """
    key = (pairs, str(device))
    if key not in _TABLES:
        if len(_TABLES) > 64:  # many resolutions seen: drop the old ones rather than grow without bound
            _TABLES.clear()
        sizes = [h * w for h, w in pairs]
        starts = [sum(sizes[:i]) for i in range(len(sizes))]
        _TABLES[key] = (torch.tensor(pairs, dtype=torch.int32, device=device).reshape(-1, 2),
                        torch.tensor(starts, dtype=torch.int32, device=device))
    return _TABLES[key]


def _launch(value: torch.Tensor, pairs: tuple, sampling_locations: torch.Tensor,
            attention_weights: torch.Tensor) -> torch.Tensor:
    """The kernel on validated inputs (see :func:`ms_deform_attn_triton`): [B, Q, heads * d]."""
    b, s, heads, d = value.shape
    _, q, _, n_levels, n_points, _ = sampling_locations.shape
    shapes, starts = _level_tables(pairs, value.device)
    out = torch.empty(b, q, heads, d, dtype=value.dtype, device=value.device)
    if out.numel() == 0:
        return out.view(b, q, heads * d)
    grid = (triton.cdiv(q, BLOCK_Q), b * heads)
    _kernel()[grid](value.contiguous(), shapes, starts, sampling_locations.contiguous(),
                    attention_weights.contiguous(), out, q, s, heads, N_LEVELS=n_levels, N_POINTS=n_points, D=d,
                    BLOCK_D=triton.next_power_of_2(d), BLOCK_Q=BLOCK_Q)
    return out.view(b, q, heads * d)


_LAUNCHED: dict[str, bool] = {}  # device -> whether the kernel could be built and launched there


def _launch_or_grid_sample(value: torch.Tensor, pairs: tuple, sampling_locations: torch.Tensor,
                           attention_weights: torch.Tensor) -> torch.Tensor:
    """:func:`_launch`, except that a failure at the first launch on a device (Triton builds the kernel then: no C
    compiler for its launcher, a driver it does not support) is reported once and the device keeps the
    ``grid_sample`` core. Later errors are raised as they are."""
    from .ms_deform_attn import ms_deform_attn_core

    key = str(value.device)
    if _LAUNCHED.get(key) is False:
        return ms_deform_attn_core(value, pairs, sampling_locations, attention_weights)
    if key in _LAUNCHED:
        return _launch(value, pairs, sampling_locations, attention_weights)
    try:
        out = _launch(value, pairs, sampling_locations, attention_weights)
    except Exception as err:  # noqa: BLE001  any build failure: the grid_sample core gives the same result
        warnings.warn(f"the Triton deformable-attention kernel cannot run on {key} ({type(err).__name__}: {err}); "
                      "using the grid_sample core there", RuntimeWarning, stacklevel=2)
        _LAUNCHED[key] = False
        return ms_deform_attn_core(value, pairs, sampling_locations, attention_weights)
    _LAUNCHED[key] = True
    return out


# A custom op: torch.compile (fullgraph included) calls it as one opaque node instead of tracing the launch.
@torch.library.custom_op("univs::ms_deform_attn_triton", mutates_args=())
def _op(value: torch.Tensor, shapes: list[int], sampling_locations: torch.Tensor, attention_weights: torch.Tensor,
        fallback: bool) -> torch.Tensor:
    """`shapes`: H_0, W_0, H_1, W_1, ... flattened; `fallback`: use :func:`_launch_or_grid_sample`."""
    pairs = tuple(zip(shapes[0::2], shapes[1::2]))
    run = _launch_or_grid_sample if fallback else _launch
    return run(value, pairs, sampling_locations, attention_weights)


@_op.register_fake
def _op_shape(value, shapes, sampling_locations, attention_weights, fallback):
    b, _, heads, d = value.shape
    return value.new_empty(b, sampling_locations.shape[1], heads * d)


def _checked_shapes(value: torch.Tensor, spatial_shapes: SpatialShapes, n_levels: int) -> list[int]:
    """spatial_shapes as [H_0, W_0, H_1, ...], checked against value [B, S, heads, d] and the level count."""
    if isinstance(spatial_shapes, torch.Tensor):
        spatial_shapes = spatial_shapes.tolist()
    pairs = [(int(h), int(w)) for h, w in spatial_shapes]
    if len(pairs) != n_levels or sum(h * w for h, w in pairs) != value.shape[1]:
        raise ValueError(f"spatial_shapes {pairs} do not fit {n_levels} levels and {value.shape[1]} value tokens")
    return [n for pair in pairs for n in pair]


def ms_deform_attn_triton(value: torch.Tensor, spatial_shapes: SpatialShapes, sampling_locations: torch.Tensor,
                          attention_weights: torch.Tensor) -> torch.Tensor:
    """Drop-in for ``ms_deform_attn_core`` (forward only: no gradients).

    Args:
        value: [B, S, heads, d], fp32/fp16/bf16.
        spatial_shapes: (H_l, W_l) per level, [L, 2] tensor or list of pairs.
        sampling_locations: [B, Q, heads, L, P, 2], (x, y) in [0, 1] (outside reads zeros).
        attention_weights: [B, Q, heads, L, P].

    Returns:
        [B, Q, heads * d] in value's dtype.
    """
    if triton is None:
        raise RuntimeError("the Triton deformable-attention core needs the `triton` package")
    shapes = _checked_shapes(value, spatial_shapes, sampling_locations.shape[3])
    return _op(value, shapes, sampling_locations, attention_weights, False)


def ms_deform_attn_triton_or_grid_sample(value: torch.Tensor, spatial_shapes: SpatialShapes,
                                         sampling_locations: torch.Tensor,
                                         attention_weights: torch.Tensor) -> torch.Tensor:
    """The kernel as the automatic choice: :func:`ms_deform_attn_triton`, but where Triton cannot build the kernel
    (found at the first launch on a device) a warning, once, and the ``grid_sample`` core from then on."""
    shapes = _checked_shapes(value, spatial_shapes, sampling_locations.shape[3])
    return _op(value, shapes, sampling_locations, attention_weights, True)
