"""Accuracy floors of the shipped small model on held-out generated videos, through the public API and
the project's metrics. Floors sit a few points under what tools/bench_quality.py measured with these
exact settings (8 val videos x 10 frames at 256x256; see univs_engine/weights/MODEL_CARD.md), so a regression in the
engine, the presets or the shipped weights fails here."""
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tools"))
from bench_quality import held_out, quality_report  # noqa: E402

MEASURED = {"VOS J&F": 0.915, "PVOS J&F": 0.819, "REFVOS J&F": 0.645, "VSS mIoU": 0.627, "VPS VPQ": 0.477,
            "VPS STQ": 0.476, "VIS mAP": 0.278, "VIS AP (class-agnostic)": 0.591}
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
