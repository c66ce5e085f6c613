"""How the pack is installed: requirements.txt (ComfyUI-Manager, git clone), pyproject.toml (pip, the Comfy
registry) and the wheel."""
from __future__ import annotations

import re
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _name(req: str) -> str:
    return re.split(r"[<>=!~\[; ]", req.strip(), maxsplit=1)[0].lower().replace("_", "-")


def _requirements() -> list[str]:
    lines = (ROOT / "requirements.txt").read_text().splitlines()
    return [ln.strip() for ln in lines if ln.strip() and not ln.lstrip().startswith("#")]


def test_requirements_equal_pyproject_dependencies_without_torch():
    """ComfyUI-Manager installs requirements.txt only; torch is left to the user's ComfyUI (a resolve could swap a
    CUDA build for a CPU one)."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    deps = [d for d in project["dependencies"] if _name(d) != "torch"]
    assert sorted(_requirements()) == sorted(deps)
    assert "torch" not in {_name(r) for r in _requirements()}


def test_registry_metadata_names_this_project():
    meta = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert "MinghanLi/UniVS" not in meta["project"]["urls"]["Repository"]  # the paper's code, not this pack
    comfy = meta["tool"]["comfy"]
    assert comfy["PublisherId"] and comfy["DisplayName"] and comfy["Icon"].endswith("assets/icon.png")
    assert (ROOT / "assets" / "icon.png").is_file()


def test_wheel_ships_the_builtin_model_and_no_top_level_nodes(tmp_path):
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w",
                    str(tmp_path), str(ROOT)], check=True, capture_output=True, timeout=600)
    (wheel,) = tmp_path.glob("*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert "univs_engine/weights/univs_small.safetensors" in names
    assert "univs_engine/weights/MODEL_CARD.md" in names
    assert not any(n.startswith("nodes/") for n in names)  # ComfyUI owns the top-level module `nodes`
