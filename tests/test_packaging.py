"""How the pack is installed: requirements.txt (ComfyUI-Manager, git clone), pyproject.toml (pip, the Comfy
registry) and the wheel."""
from __future__ import annotations

import os
import re
import shutil
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


# what a build of the repository sees (the top-level packages next to univs_engine too: the wheel must leave them)
BUILD_INPUTS = ("pyproject.toml", "README.md", "requirements.txt", "__init__.py", "univs_engine", "univs_train",
                "nodes")


def test_wheel_ships_the_builtin_model_and_neither_nodes_nor_training(tmp_path):
    # built from a copy of the sources: a build/ folder left by an earlier local build would leak stale files
    # into the wheel (setuptools never prunes it), and the working tree stays untouched
    src = tmp_path / "src"
    src.mkdir()
    for name in BUILD_INPUTS:
        if (ROOT / name).is_dir():
            shutil.copytree(ROOT / name, src / name, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        else:
            shutil.copy2(ROOT / name, src / name)
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w",
                    str(tmp_path), str(src)], check=True, capture_output=True, timeout=600)
    (wheel,) = tmp_path.glob("*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert "univs_engine/weights/univs_small.safetensors" in names
    assert "univs_engine/weights/MODEL_CARD.md" in names
    assert not any(n.startswith("nodes/") for n in names)  # ComfyUI owns the top-level module `nodes`
    # training and the generated world stay in the clone: installs carry inference only
    training = [n for n in names if n.startswith(("univs_train/", "univs_engine/training/", "univs_engine/data/"))]
    assert not training, training
    # ... and `univs train` from the wheel says so, on one line, with exit status 2
    site = tmp_path / "site"
    zipfile.ZipFile(wheel).extractall(site)
    code = "import sys; from univs_engine.cli import main; sys.exit(main(['train', '--help']))"
    env = {**os.environ, "PYTHONPATH": str(site)}
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path, env=env,
                         timeout=120)
    assert run.returncode == 2 and run.stdout == "", (run.returncode, run.stdout, run.stderr)
    assert run.stderr.count("\n") == 1 and "univs train: error: training needs a clone of the repository" in run.stderr
    assert str(site) in run.stderr  # it is the wheel's copy that answered
