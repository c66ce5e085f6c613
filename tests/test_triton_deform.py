"""The Triton deformable-attention kernel (univs_engine/modeling/ms_deform_triton.py) and the gather core
(ms_deform_attn.ms_deform_attn_gather, the CPU default) against the grid_sample core, and how the engine picks
between them.

On the CPU the kernel runs in Triton's interpreter (TRITON_INTERPRET=1, set per test); with UNIVS_TEST_DEVICE=cuda
the same checks run the compiled kernel on the GPU. Kernel tests skip without the ``triton`` package; the selection
tests run everywhere.
"""
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from univs_engine.modeling import ms_deform_attn as mda
from univs_engine.modeling import ms_deform_triton as mdt
from univs_engine.modeling.ms_deform_attn import MSDeformAttn, ms_deform_attn_core, select_core

ROOT = Path(__file__).resolve().parents[1]
DEVICE = os.environ.get("UNIVS_TEST_DEVICE", "cpu")
REFERENCE_SHAPES = [(8, 12), (4, 6), (2, 3)]  # the R50 decoder's 3 levels (strides 8/16/32), shrunk


@pytest.fixture
def kernel(monkeypatch):
    """The Triton core, runnable on DEVICE (the interpreter on the CPU)."""
    pytest.importorskip("triton", reason="the Triton kernel tests need the `triton` package (pip install triton)")
    if torch.device(DEVICE).type == "cpu":
        monkeypatch.setenv("TRITON_INTERPRET", "1")
    monkeypatch.delenv(mda.CORE_ENV, raising=False)
    assert mdt.triton_available(DEVICE)
    return mdt.ms_deform_attn_triton


@pytest.fixture(params=["gather", "triton"])
def core(request, monkeypatch):
    """Each fast core: the gather core (plain torch) and the Triton kernel (as `kernel`)."""
    if request.param == "gather":
        monkeypatch.delenv(mda.CORE_ENV, raising=False)
        return mda.ms_deform_attn_gather
    return request.getfixturevalue("kernel")


def inputs(shapes, b, q, heads, d, points, seed, dtype=torch.float32):
    """Random (value [B,S,heads,d], locations [B,Q,heads,L,P,2] in [-0.2, 1.2], weights [B,Q,heads,L,P]) on DEVICE;
    about a sixth of the locations moved onto a map edge or a pixel-centre line of their level."""
    g = torch.Generator().manual_seed(seed)
    levels, s = len(shapes), sum(h * w for h, w in shapes)
    value = torch.randn(b, s, heads, d, generator=g)
    loc = torch.rand(b, q, heads, levels, points, 2, generator=g) * 1.4 - 0.2
    size = torch.tensor([[w, h] for h, w in shapes], dtype=torch.float32)[:, None, :]  # [L, 1, 2] as (x, y)
    edge = torch.randint(0, 6, loc.shape, generator=g)
    on_line = (torch.randint(-1, 11, loc.shape, generator=g) + 0.5 * torch.randint(0, 2, loc.shape, generator=g)) / size
    loc = torch.where(edge == 0, on_line, loc)
    loc = torch.where(edge == 1, torch.randint(0, 2, loc.shape, generator=g).float(), loc)  # exactly 0 or 1
    weights = torch.rand(b, q, heads, levels, points, generator=g)
    weights = weights / weights.sum((-1, -2), keepdim=True)
    return [t.to(DEVICE) for t in (value.to(dtype), loc, weights)]


def max_error(kernel, shapes, value, loc, weights) -> float:
    out = kernel(value, shapes, loc, weights)
    ref = ms_deform_attn_core(value.float(), shapes, loc.float(), weights.float())
    assert out.shape == ref.shape and out.dtype == value.dtype
    return (out.float() - ref).abs().max().item()


def test_reference_shapes_fp32(core):
    """8 heads of 32 channels, 3 levels, 4 points, every token a query (the encoder's self-attention)."""
    q = sum(h * w for h, w in REFERENCE_SHAPES)
    assert max_error(core, REFERENCE_SHAPES, *inputs(REFERENCE_SHAPES, 1, q, 8, 32, 4, seed=0)) < 1e-5


@pytest.mark.parametrize("seed", range(4))
def test_random_shapes_fp32(core, seed):
    """Odd map sizes (1 pixel wide included), 1-4 levels, odd channel counts, 1-2 frames, query counts around the
    core's block of 64."""
    g = torch.Generator().manual_seed(100 + seed)
    rnd = lambda lo, hi: int(torch.randint(lo, hi + 1, (1,), generator=g))  # noqa: E731
    shapes = [(rnd(1, 9), rnd(1, 11)) for _ in range(rnd(1, 4))]
    b, heads, d = rnd(1, 2), rnd(1, 3), (1, 5, 16, 24)[seed]
    q = (7, 64, 65, 100)[seed]
    assert max_error(core, shapes, *inputs(shapes, b, q, heads, d, rnd(1, 3), seed=seed)) < 1e-5


def test_locations_far_outside_read_zeros(core):
    shapes = [(5, 7), (3, 3)]
    value, loc, weights = inputs(shapes, 2, 20, 2, 8, 2, seed=7)
    far = torch.tensor([-1e6, -3.0, -1.0, -0.5, 1.5, 2.0, 7.0, 1e6], device=DEVICE)
    loc = far[torch.randint(0, len(far), loc.shape, generator=torch.Generator().manual_seed(1))].to(DEVICE)
    assert core(value, shapes, loc, weights).abs().max().item() == 0.0
    loc[..., 1] = 0.5  # y inside, x outside: still zero
    assert core(value, shapes, loc, weights).abs().max().item() == 0.0


def test_shapes_as_tensor_and_two_frames(core):
    value, loc, weights = inputs(REFERENCE_SHAPES, 2, 30, 2, 16, 4, seed=3)
    out = core(value, torch.tensor(REFERENCE_SHAPES, device=DEVICE), loc, weights)
    assert (out - ms_deform_attn_core(value, REFERENCE_SHAPES, loc, weights)).abs().max().item() < 1e-5


@pytest.mark.parametrize("dtype,bound", [(torch.float16, 5e-3), (torch.bfloat16, 4e-2)])
def test_half_precision_against_fp32(kernel, dtype, bound):
    """fp16 / bf16 values (and locations and weights, as under autocast), summed in fp32: the error is the
    inputs' and the output's rounding only."""
    value, loc, weights = inputs(REFERENCE_SHAPES, 1, 40, 2, 32, 4, seed=5, dtype=dtype)
    assert max_error(kernel, REFERENCE_SHAPES, value, loc.to(dtype), weights.to(dtype)) < bound


def test_module_with_the_triton_core(kernel, monkeypatch):
    """MSDeformAttn with the Triton core (swapped on the instance, or forced by UNIVS_DEFORM_CORE) equals the
    default grid_sample one."""
    torch.manual_seed(0)
    attn = MSDeformAttn(d_model=64, n_levels=3, n_heads=4, n_points=4).to(DEVICE)
    with torch.no_grad():
        attn.sampling_offsets.weight.normal_(0, 0.5)  # offsets that reach outside the maps
        attn.attention_weights.weight.normal_(0, 0.5)
    s = sum(h * w for h, w in REFERENCE_SHAPES)
    query, src = torch.randn(2, 25, 64, device=DEVICE), torch.randn(2, s, 64, device=DEVICE)
    ref_pts = torch.rand(2, 25, 3, 2, device=DEVICE)
    with torch.no_grad():
        monkeypatch.setenv(mda.CORE_ENV, "grid_sample")
        base = attn(query, ref_pts, src, REFERENCE_SHAPES)
        monkeypatch.setenv(mda.CORE_ENV, "triton")
        assert select_core(DEVICE) is kernel
        forced = attn(query, ref_pts, src, REFERENCE_SHAPES)
        monkeypatch.delenv(mda.CORE_ENV)
        attn.core = kernel
        swapped = attn(query, ref_pts, src, REFERENCE_SHAPES)
    assert (forced - base).abs().max().item() < 1e-5 and torch.equal(forced, swapped)


def test_training_keeps_grid_sample(kernel, monkeypatch):
    """The kernel is forward only: where gradients are needed the default core uses grid_sample, even if forced."""
    monkeypatch.setenv(mda.CORE_ENV, "triton")
    attn = MSDeformAttn(d_model=16, n_levels=1, n_heads=2, n_points=2).to(DEVICE)
    src = torch.randn(1, 12, 16, device=DEVICE, requires_grad=True)
    out = attn(torch.randn(1, 4, 16, device=DEVICE), torch.rand(1, 4, 1, 2, device=DEVICE), src, [(3, 4)])
    out.sum().backward()
    assert src.grad is not None and attn.value_proj.weight.grad.abs().sum() > 0


def test_fullgraph_compile_calls_the_kernel_as_one_op(kernel, monkeypatch):
    """torch.compile(fullgraph=True) does not trace into the launch: the kernel is a custom op."""
    monkeypatch.setenv(mda.CORE_ENV, "triton")
    torch.manual_seed(1)
    attn = MSDeformAttn(d_model=32, n_levels=3, n_heads=2, n_points=2).to(DEVICE).eval()
    s = sum(h * w for h, w in REFERENCE_SHAPES)
    args = (torch.randn(1, 9, 32, device=DEVICE), torch.rand(1, 9, 3, 2, device=DEVICE),
            torch.randn(1, s, 32, device=DEVICE), REFERENCE_SHAPES)
    torch._dynamo.reset()
    with torch.no_grad():
        compiled = torch.compile(attn, fullgraph=True, backend="eager")(*args)
        assert torch.equal(compiled, attn(*args))


def test_first_launch_failure_falls_back_once(kernel, monkeypatch):
    """Automatic selection survives a Triton that cannot build the kernel: one warning, then grid_sample."""
    def broken(*args):
        raise RuntimeError("no C compiler")

    monkeypatch.setattr(mdt, "_launch", broken)
    monkeypatch.setattr(mdt, "_LAUNCHED", {})
    args = inputs([(3, 4)], 1, 5, 1, 4, 1, seed=2)
    with pytest.warns(RuntimeWarning, match="no C compiler"):
        out = mdt.ms_deform_attn_triton_or_grid_sample(args[0], [(3, 4)], *args[1:])
    assert torch.equal(out, ms_deform_attn_core(args[0], [(3, 4)], *args[1:]))
    assert torch.equal(mdt.ms_deform_attn_triton_or_grid_sample(args[0], [(3, 4)], *args[1:]), out)


@pytest.mark.parametrize("dtype,arch", [("fp32", 80), ("bf16", 90), ("fp16", 75)])
def test_kernel_compiles_for_cuda_without_a_gpu(dtype, arch):
    """What the interpreter does not check: the kernel passes Triton's compiler down to machine code for a GPU
    (A100, H100, T4 generations)."""
    triton = pytest.importorskip("triton", reason="needs the `triton` package")
    from triton.backends import backends
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    if "nvidia" not in backends:
        pytest.skip("this Triton build has no NVIDIA backend")
    fn = triton.jit(mdt._sample_kernel)
    ptr = {"value_ptr": f"*{dtype}", "out_ptr": f"*{dtype}", "shapes_ptr": "*i32", "starts_ptr": "*i32",
           "loc_ptr": f"*{dtype}", "attn_ptr": f"*{dtype}"}
    sig = {name: ptr.get(name, "i32") for name in fn.arg_names}
    consts = {"N_LEVELS": 3, "N_POINTS": 4, "D": 32, "BLOCK_D": 32, "BLOCK_Q": mdt.BLOCK_Q}
    sig.update({name: "constexpr" for name in consts})
    compiled = triton.compile(ASTSource(fn, sig, constexprs=consts), target=GPUTarget("cuda", arch, 32))
    assert compiled.asm["cubin"]


# ---------------------------------------------------------------------------------------------- selection
def test_cpu_uses_the_gather_core_unless_forced(monkeypatch):
    monkeypatch.delenv(mda.CORE_ENV, raising=False)
    assert MSDeformAttn.core is mda.default_core
    assert select_core("cpu") is mda.ms_deform_attn_gather and select_core("mps") is ms_deform_attn_core
    monkeypatch.setenv(mda.CORE_ENV, "grid_sample")
    assert select_core("cpu") is ms_deform_attn_core and select_core("cuda") is ms_deform_attn_core
    monkeypatch.setenv(mda.CORE_ENV, "gather")
    assert select_core("cpu") is mda.ms_deform_attn_gather and select_core("cuda") is mda.ms_deform_attn_gather
    monkeypatch.setenv(mda.CORE_ENV, "fast")
    with pytest.raises(ValueError, match="UNIVS_DEFORM_CORE='fast'"):
        select_core("cpu")


def test_forcing_triton_where_it_cannot_run_says_so(monkeypatch):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    monkeypatch.setenv(mda.CORE_ENV, "triton")
    with pytest.raises(RuntimeError, match="UNIVS_DEFORM_CORE=triton.*cpu"):
        select_core("cpu")


def test_without_triton_the_module_imports_and_reports_unavailable():
    """triton made unimportable: the module imports, nothing claims the kernel, CUDA keeps grid_sample."""
    code = (
        "import os, sys; sys.modules['triton'] = None; os.environ['TRITON_INTERPRET'] = '1'\n"
        "from univs_engine.modeling import ms_deform_attn as mda, ms_deform_triton as mdt\n"
        "assert mdt.triton is None and not mdt.triton_available('cpu') and not mdt.triton_available('cuda')\n"
        "assert mda.select_core('cuda') is mda.ms_deform_attn_core\n"
        "os.environ['UNIVS_DEFORM_CORE'] = 'triton'\n"
        "for call in (lambda: mda.select_core('cuda'), lambda: mda.core_named('triton')):\n"
        "    try:\n"
        "        call()\n"
        "    except RuntimeError as e:\n"
        "        assert 'triton' in str(e), e\n"
        "    else:\n"
        "        raise AssertionError('no error')\n"
        "print('ok')\n")
    env = {k: v for k, v in os.environ.items() if k != "UNIVS_DEFORM_CORE"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, cwd=ROOT, env=env)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr[-2000:]


def test_gather_core_in_the_module_and_gradients_use_grid_sample(monkeypatch):
    """MSDeformAttn on the CPU (the gather core by default) equals the grid_sample core within float rounding; with
    gradients the default core is grid_sample, bit for bit."""
    monkeypatch.delenv(mda.CORE_ENV, raising=False)
    torch.manual_seed(0)
    attn = MSDeformAttn(d_model=64, n_levels=3, n_heads=4, n_points=4)
    with torch.no_grad():
        attn.sampling_offsets.weight.normal_(0, 0.5)
        attn.attention_weights.weight.normal_(0, 0.5)
    s = sum(h * w for h, w in REFERENCE_SHAPES)
    query, src, ref_pts = torch.randn(2, 25, 64), torch.randn(2, s, 64), torch.rand(2, 25, 3, 2)
    with torch.no_grad():
        fast = attn(query, ref_pts, src, REFERENCE_SHAPES)
        attn.core = ms_deform_attn_core
        base = attn(query, ref_pts, src, REFERENCE_SHAPES)
        del attn.core
    assert (fast - base).abs().max().item() < 1e-5 and not torch.equal(fast, base)
    src.requires_grad_(True)
    with_grad = attn(query, ref_pts, src, REFERENCE_SHAPES)
    assert torch.equal(with_grad.detach(), base)
