"""The engine's shape, measured: size limits of the inference layer and the API (functions short enough to
read at once, few parameters), no copied blocks in the engine or the nodes, and layering (the engine never
imports ComfyUI or the nodes; a ComfyUI install never imports the trainer)."""
import ast
import re
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
ENGINE = ROOT / "univs_engine"
LIMITED = sorted((ENGINE / "inference").glob("*.py")) + [ENGINE / "api.py"]
MAX_FUNCTION_LINES, MAX_PARAMETERS, MAX_ENTITY_LINES = 60, 8, 600


def functions(path: Path):
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            yield node


def parameter_count(fn: ast.FunctionDef) -> int:
    a = fn.args
    names = [x.arg for x in a.posonlyargs + a.args + a.kwonlyargs] + [x.arg for x in (a.vararg, a.kwarg) if x]
    return len([n for n in names if n not in ("self", "cls")])


@pytest.mark.parametrize("path", LIMITED, ids=lambda p: str(p.relative_to(ROOT)))
def test_functions_are_short_and_take_few_parameters(path):
    long = [f"{fn.name} ({fn.end_lineno - fn.lineno + 1} lines)" for fn in functions(path)
            if fn.end_lineno - fn.lineno + 1 > MAX_FUNCTION_LINES]
    wide = [f"{fn.name} ({parameter_count(fn)} parameters)" for fn in functions(path)
            if parameter_count(fn) > MAX_PARAMETERS]
    assert not long and not wide, f"{path.name}: " + ", ".join(long + wide)


def test_entity_loop_module_stays_small():
    lines = len((ENGINE / "inference" / "entity.py").read_text().splitlines())
    assert lines < MAX_ENTITY_LINES, f"inference/entity.py has {lines} lines"


def test_the_limits_are_measured_correctly():
    """The measuring functions see long and wide functions (so the tests above can fail)."""
    body = "\n".join(f"    x{i} = {i}" for i in range(70))
    src = f"def wide(a, b, c, d, e, f, g, h, *rest, k=1, **kw):\n{body}\n"
    (fn,) = ast.parse(src).body
    assert parameter_count(fn) == 11 and fn.end_lineno - fn.lineno + 1 == 71


# ---------------------------------------------------------------------------------------------- copies
RUN = 6
_SKIP = re.compile(r"^(#|import |from \S+ import |[)\]}:,]*$|\"\"\"|@)")


def normalised_lines(path: Path):
    """(line number, text) of the lines that carry code: whitespace folded; blank lines, comments,
    imports, lone punctuation and decorators left out."""
    for k, raw in enumerate(path.read_text().splitlines(), 1):
        line = " ".join(raw.split())
        if line and not _SKIP.match(line):
            yield k, line


def repeated_blocks(paths) -> list[str]:
    """Places where RUN consecutive code lines appear again, identical, elsewhere (or in the same file)."""
    seen: dict[tuple, list[str]] = defaultdict(list)
    for path in paths:
        lines = list(normalised_lines(path))
        for i in range(len(lines) - RUN + 1):
            key = tuple(t for _, t in lines[i:i + RUN])
            seen[key].append(f"{path.relative_to(ROOT)}:{lines[i][0]}")
    return [" ~ ".join(places) for places in seen.values() if len(places) > 1]


def test_no_block_of_six_lines_is_written_twice():
    paths = sorted(ENGINE.rglob("*.py")) + sorted((ROOT / "nodes").glob("*.py"))
    copies = repeated_blocks(paths)
    assert not copies, "copied blocks (make one helper):\n" + "\n".join(copies[:20])


def test_the_copy_finder_finds_copies(tmp_path):
    block = "\n".join(f"value_{i} = compute({i})" for i in range(RUN))
    (tmp_path / "a.py").write_text(f"def f():\n{block}\n")
    (tmp_path / "b.py").write_text(f"# other\n\ndef g():\n    {block.replace(chr(10), chr(10) + '    ')}\n")
    global ROOT
    old, ROOT = ROOT, tmp_path
    try:
        assert len(repeated_blocks([tmp_path / "a.py", tmp_path / "b.py"])) == 1
    finally:
        ROOT = old


# ---------------------------------------------------------------------------------------------- layers
def imported_modules(path: Path) -> set[str]:
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            out.add(node.module)
    return out


def test_the_engine_imports_neither_comfyui_nor_the_nodes():
    bad = {str(p.relative_to(ROOT)): sorted(m for m in imported_modules(p)
                                            if m.split(".")[0] in ("comfy", "comfy_api", "folder_paths", "nodes"))
           for p in ENGINE.rglob("*.py")}
    assert not {k: v for k, v in bad.items() if v}


def _trainer_references(path: Path):
    """Line numbers of `path`'s imports of univs_train and of the name itself as a string (importlib)."""
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            names = [node.module or ""] if node.level == 0 else []
        elif isinstance(node, ast.Constant) and isinstance(node.value, str):
            names = [node.value]
        else:
            continue
        if any(n == "univs_train" or n.startswith("univs_train.") for n in names):
            yield node.lineno


def test_the_engine_reaches_the_trainer_only_in_the_train_command():
    """univs_train (training, the generated world) is not installed: the engine refers to it only in `univs
    train`'s dispatch in cli.main (which finds it next to the package in a clone)."""
    (main,) = [fn for fn in functions(ENGINE / "cli.py") if fn.name == "main"]
    (branch,) = [n for n in ast.walk(main) if isinstance(n, ast.If) and ast.unparse(n.test) == "argv[:1] == ['train']"]
    inside = range(branch.lineno, branch.end_lineno + 1)
    stray = [f"{p.relative_to(ROOT)}:{line}" for p in sorted(ENGINE.rglob("*.py")) for line in _trainer_references(p)
             if not (p.name == "cli.py" and p.parent == ENGINE and line in inside)]
    assert not stray, "the engine refers to univs_train outside `univs train`: " + ", ".join(stray)
    assert list(_trainer_references(ENGINE / "cli.py"))  # the dispatch is found, so the check can fail


def test_importing_the_engine_imports_no_trainer():
    code = ("import sys, univs_engine.api, univs_engine.cli, univs_engine.evaluate; "
            "print(sorted(m for m in sys.modules if m.split('.')[0] == 'univs_train'))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, check=True,
                         cwd=ROOT)  # univs_train importable here: not imported all the same
    assert out.stdout.strip() == "[]"
