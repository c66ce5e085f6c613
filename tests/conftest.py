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


def load_pack():
    """The node pack imported as package ``univs_pack`` (never as top-level ``nodes``: ComfyUI owns that)."""
    import importlib.util

    import torch

    if "univs_pack" in sys.modules:
        return sys.modules["univs_pack"]
    try:  # with ComfyUI on the path: make it start in CPU mode when there is no GPU (as `main.py --cpu`)
        import comfy.cli_args

        if not torch.cuda.is_available():
            comfy.cli_args.args.cpu = True
    except ImportError:
        pass
    spec = importlib.util.spec_from_file_location("univs_pack", ROOT / "__init__.py",
                                                  submodule_search_locations=[str(ROOT)])
    mod = importlib.util.module_from_spec(spec)
    sys.modules["univs_pack"] = mod
    spec.loader.exec_module(mod)
    return mod
