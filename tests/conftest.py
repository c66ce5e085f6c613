import functools
import importlib.util
import json
import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _register_trainer() -> None:
    """Make `univs_train` (training and the synthetic world: in the clone, not in the installed package)
    importable, by file location as `univs train` does: the repository root on sys.path would also expose our
    `nodes` folder as a top-level module, shadowing ComfyUI's own (tests run with ComfyUI on the path too)."""
    if "univs_train" in sys.modules:
        return
    init = ROOT / "univs_train" / "__init__.py"
    spec = importlib.util.spec_from_file_location("univs_train", init, submodule_search_locations=[str(init.parent)])
    sys.modules["univs_train"] = module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)


_register_trainer()
FULL_REFERENCE = Path(os.environ.get("UNIVS_REFERENCE", ROOT.parent / "shared" / "reference"))
REDUCED_REFERENCE = ROOT / "tests" / "reference_reduced"  # made by tools/make_reduced_reference.py
# The full set is used whenever its folder exists; otherwise (a plain clone, or UNIVS_REFERENCE naming a
# folder that is not there) the reduced set carried in the repository.
REDUCED = not FULL_REFERENCE.is_dir() and REDUCED_REFERENCE.is_dir()
REFERENCE = REDUCED_REFERENCE if REDUCED else FULL_REFERENCE


def reference_set_line() -> str:
    if REDUCED:
        return f"UniVS reference set: REDUCED ({REDUCED_REFERENCE}); no full set at {FULL_REFERENCE}"
    if FULL_REFERENCE.is_dir():
        return f"UniVS reference set: FULL ({FULL_REFERENCE})"
    return f"UniVS reference set: NONE (neither {FULL_REFERENCE} nor {REDUCED_REFERENCE}): parity tests fail"


def pytest_report_header(config):
    return reference_set_line()


def pytest_terminal_summary(terminalreporter):
    terminalreporter.write_line(reference_set_line())  # also under -q, which drops the header


def reference_path(name: str) -> Path:
    path = REFERENCE / name
    if not path.exists():
        pytest.fail(f"reference fixture missing: {path} (set UNIVS_REFERENCE to the shared/reference folder, "
                    f"or restore {REDUCED_REFERENCE.relative_to(ROOT)})")
    if not REDUCED:
        _check_carried_copy(name)
    return path


class Reference(dict):
    """The tensors of one reference file, by key, as stored.

    In the reduced set a key may hold only a fixed subset of the official tensor: with ``lead`` and ``step``
    from the file's metadata, ``official.flatten(lead)[..., ::step]`` (the first ``lead`` dims, e.g. frames or
    decoder layers, kept). ``pick`` takes the same subset of a tensor of ours laid out like the official one,
    so every comparison reads ``compare(ref.pick(key, ours), ref[key])`` in both modes.
    """

    def __init__(self, tensors, reductions):
        super().__init__(tensors)
        self.reductions = reductions

    def __repr__(self):  # failure reports name the keys and shapes, not every value
        return "Reference(" + ", ".join(f"{k}{list(v.shape)}" for k, v in self.items()) + ")"

    def pick(self, key, ours):
        """ours [official shape; the first ``lead`` dims may be a sub-range] -> the subset stored for ``key``."""
        spec = self.reductions.get(key)
        if spec is None:  # stored whole
            return ours
        lead, step, shape = spec["lead"], spec["step"], spec["shape"]
        # the flattened dims must be the official ones, or the stride would pick other elements
        assert list(ours.shape[lead:]) == shape[lead:], (key, tuple(ours.shape), shape)
        return ours.flatten(lead)[..., ::step]


def _read_reference(path: Path, device) -> Reference:
    from safetensors import safe_open

    with safe_open(str(path), "pt", device=str(device)) as f:
        reduction = json.loads((f.metadata() or {}).get("reduction", "{}"))
        return Reference({k: f.get_tensor(k) for k in f.keys()}, reduction.get("keys", {}))


def load_reference(name: str, device="cpu") -> Reference:
    """One reference file of the set in use (full or reduced), as a ``Reference``."""
    return _read_reference(reference_path(name), device)


@functools.lru_cache(maxsize=None)
def _check_carried_copy(name: str) -> None:
    """With the full set present, the carried file of the same name must still be what the script makes from it."""
    import torch

    carried, full = REDUCED_REFERENCE / name, FULL_REFERENCE / name
    if not carried.exists():
        return
    if name.endswith(".safetensors"):
        small, whole = _read_reference(carried, "cpu"), _read_reference(full, "cpu")
        stale = [k for k, v in small.items() if k not in whole or not torch.equal(small.pick(k, whole[k]), v)]
    else:
        stale = [] if carried.read_bytes() == full.read_bytes() else ["(file bytes)"]
    if stale:
        pytest.fail(f"{carried} no longer matches {full} for {stale}: re-run tools/make_reduced_reference.py")


def reference_r50(device="cpu"):
    """A fresh R50 UniVS holding the reference weights (the rule's values, with the official tied temperature)."""
    import torch  # noqa: PLC0415
    import weight_rule  # noqa: PLC0415
    from univs_engine.config import get_config  # noqa: PLC0415
    from univs_engine.modeling.univs import build_univs  # noqa: PLC0415

    torch.set_num_threads(2)
    model = build_univs(get_config("r50"))
    sd = weight_rule.official_effective_state_dict(weight_rule.make_state_dict(model.state_dict()))
    model.load_state_dict(sd, strict=True)
    return model.to(device)


@pytest.fixture(scope="session")
def make_weights():
    """The reference weight rule, this repository's implementation (tests/weight_rule.py); test_weight_rule.py
    checks it against the reference set's own make_weights.py whenever that is present."""
    import weight_rule  # noqa: PLC0415

    return weight_rule


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
