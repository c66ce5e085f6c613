#!/usr/bin/env bash
# The GPU check of the fast path, in one go (meant to finish in under 8 minutes on an H100/H200):
#   1. the machine: GPU name, torch / CUDA / Triton versions
#   2. parity on the device: the reference parity tests with UNIVS_TEST_DEVICE=cuda (fp32, 1e-4 bounds), the
#      Triton deformable-attention kernel against the grid_sample core, compiled-vs-eager parity
#   3. reduced precision: bf16 / fp16 autocast logit error and mask agreement against fp32 (tools/precision_error.py)
#   4. the FPS table (tools/bench_speed.py): R50 at 640p, VOS with 1 and 5 targets, VIS, VPS, RefVOS; eager,
#      compiled, compiled + CUDA graphs; Triton core on / off (the full grid for VOS 1 target)
#
#   bash tools/gpu_check.sh             needs a CUDA GPU: without one it stops at once with exit code 2
#   bash tools/gpu_check.sh --dry-run   the same steps on the CPU at toy sizes, to check the script itself
#
# Environment: PYTHON (default: python), UNIVS_GPU_FRAMES (frames per FPS row, default 24).
# Run from a checkout with the test extras installed (README command 2). Every step runs even if an earlier one
# fails; the script exits non-zero if any failed and names them at the end.
set -uo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
PY=${PYTHON:-python}
DRY=0
case "${1:-}" in
    --dry-run) DRY=1 ;;
    "") ;;
    *) echo "usage: bash tools/gpu_check.sh [--dry-run]" >&2; exit 2 ;;
esac

T0=$(date +%s)
FAILED=()
step() { printf '\n== [%4ds] %s\n' "$(($(date +%s) - T0))" "$1"; }
run() { "$@" || FAILED+=("$*"); }

if ! "$PY" -c "import torch" 2>/dev/null; then
    echo "gpu_check: FAIL: '$PY' cannot import torch (set PYTHON, or install with README command 2)" >&2
    exit 2
fi
if ! "$PY" -c "import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)"; then
    if [[ $DRY == 0 ]]; then
        echo "gpu_check: FAIL: torch sees no CUDA device ($("$PY" -c 'import torch; print("torch", torch.__version__, "built for CUDA", torch.version.cuda)')). Nothing was measured. Run it on a GPU machine, or with --dry-run to check this script on the CPU." >&2
        exit 2
    fi
    DEVICE=cpu CONFIG=small SIZE=96 FRAMES=3 DTYPE=fp32 MODES=eager,compiled
    echo "gpu_check: DRY RUN on the CPU (toy sizes; the numbers below mean nothing)"
else
    DEVICE=cuda CONFIG=r50 SIZE=640 FRAMES=${UNIVS_GPU_FRAMES:-24} DTYPE=bf16 MODES=eager,compiled,graphs
fi

step "machine"
command -v nvidia-smi >/dev/null && nvidia-smi -L
"$PY" - <<'EOF'
import importlib.util, torch
print("torch", torch.__version__, "| CUDA", torch.version.cuda, "| device",
      torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu")
spec = importlib.util.find_spec("triton")
print("triton", __import__("triton").__version__ if spec else "not installed")
EOF

step "parity on $DEVICE (fp32)"
run env UNIVS_TEST_DEVICE=$DEVICE "$PY" -m pytest -q -p no:cacheprovider tests/test_parity_image_encoder.py \
    tests/test_parity_decoder.py tests/test_triton_deform.py tests/test_compiled.py

step "bf16 / fp16 agreement with fp32 on $DEVICE"
run "$PY" tools/precision_error.py --device $DEVICE --frames $([[ $DRY == 1 ]] && echo 4 || echo 8)

CORES=default,grid_sample
"$PY" -c "import triton" 2>/dev/null && CORES=grid_sample,triton
[[ $DRY == 1 ]] && CORES=grid_sample
step "FPS: $CONFIG at ${SIZE}p, $FRAMES frames, $DTYPE (paper, V100, R50: VOS 52, VIS 60, VPS 31, RefVOS 60 FPS)"
run "$PY" tools/bench_speed.py --device $DEVICE --config $CONFIG --size $SIZE --frames $FRAMES --dtype $DTYPE \
    --tasks vos1 --modes $MODES --cores $CORES --stages
run "$PY" tools/bench_speed.py --device $DEVICE --config $CONFIG --size $SIZE --frames $FRAMES --dtype $DTYPE \
    --tasks vos5,vis,vps,refvos --modes "eager,${MODES##*,}"

step "done in $(($(date +%s) - T0)) s"
if ((${#FAILED[@]})); then
    printf 'gpu_check: FAILED step: %s\n' "${FAILED[@]}" >&2
    exit 1
fi
echo "gpu_check: all steps passed$([[ $DRY == 1 ]] && echo ' (dry run: put nothing from it in the README)')"
