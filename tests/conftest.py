import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
REFERENCE = Path(os.environ.get("UNIVS_REFERENCE", ROOT.parent / "shared" / "reference"))


def reference_path(name: str) -> Path:
    path = REFERENCE / name
    if not path.exists():
        pytest.fail(f"reference fixture missing: {path} (set UNIVS_REFERENCE to the shared/reference folder)")
    return path


@pytest.fixture(scope="session")
def make_weights():
    """The shared deterministic weight rule (../shared/reference/make_weights.py), imported, not copied."""
    sys.path.insert(0, str(REFERENCE))
    try:
        import make_weights as mw  # noqa: PLC0415
    finally:
        sys.path.pop(0)
    return mw
