"""Accuracy floors of the shipped small model on held-out generated videos, through the public API and
the project's metrics. Floors sit a few points under what tools/bench_quality.py measured with these
exact settings (8 val videos x 10 frames at 256x256; see univs_engine/weights/MODEL_CARD.md), so a regression in the
engine, the presets or the shipped weights fails here. J&F follows the DAVIS convention (mean over objects); the
temporal-consistency and RefVOS false-positive measures have ceilings the same margin above their measurement."""
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tools"))
from bench_quality import held_out, quality_report  # noqa: E402

MEASURED = {"VOS J&F": 0.902, "PVOS J&F": 0.929, "REFVOS J&F": 0.628, "VSS mIoU": 0.627, "VPS VPQ": 0.564,
            "VPS STQ": 0.510, "VIS mAP": 0.272, "VIS AP (class-agnostic)": 0.604,
            "vps_stuff_lifetime": 1.000}
# lower is better: RefVOS false-positive area, the worst VPS frame's unlabelled share, empty PVOS stuff frames
MEASURED_LOW = {"REFVOS FP area": 0.203, "vps_unlabelled_max": 0.067, "pvos_stuff_empty": 0.000}
MARGIN = 0.04


@pytest.fixture(scope="module")
def report():
    from univs_engine.api import load_model

    torch.set_num_threads(2)
    return quality_report(load_model("small"), held_out(8, 10, 256),
                          tasks=("vos", "pvos", "refvos", "vis", "vss", "vps"))


@pytest.mark.parametrize("metric", sorted(MEASURED))
def test_floor(report, metric):
    assert report[metric] >= MEASURED[metric] - MARGIN, f"{metric} {report[metric]:.3f}"


@pytest.mark.parametrize("metric", sorted(MEASURED_LOW))
def test_ceiling(report, metric):
    assert report[metric] <= MEASURED_LOW[metric] + MARGIN, f"{metric} {report[metric]:.3f}"
