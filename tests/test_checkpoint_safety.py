"""Hostile checkpoints: no read runs code from a file, broken weights are refused naming the file and the
tensor, load mismatches are CheckpointErrors listing the keys, and unwritable destinations are one-line
errors that leave no partial file (the ComfyUI node then keeps using the .pth)."""
from __future__ import annotations

import ast
import builtins
import errno
import json
import logging
import os
import pickle
import shutil
import tempfile
from pathlib import Path

import pytest
import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file

from conftest import load_pack
from univs_engine import checkpoint as ckpt_mod
from univs_engine.api import load_model, small_model_path
from univs_engine.checkpoint import CheckpointError, CheckpointWriteError, convert_checkpoint, load_checkpoint
from univs_engine.config import get_config
from univs_engine.modeling.univs import build_univs
from univs_train import evaluate as eval_mod
from univs_train import state as state_mod
from univs_train import train as train_mod
from univs_train.criterion import LossConfig
from univs_train.export import export_checkpoint

ROOT = Path(__file__).resolve().parents[1]
# torch's advice on a refused pickle ("Re-running torch.load with weights_only set to False will likely succeed")
# must never reach a user: following it runs the file's code
UNSAFE_ADVICE = ("weights_only", "trusted source", "arbitrary code execution")

torch.set_num_threads(1)


# ------------------------------------------------------------------------------------------ fixtures
class Payload:
    """Unpickling this writes `marker`: the stand-in for an attacker's code."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return builtins.exec, (f"open({self.marker!r}, 'w').write('pwned')",)


def write_malicious(path: Path, marker: Path, kind: str) -> Path:
    """A checkpoint-looking file whose unpickling runs code: a torch.save archive with real tensors next to the
    payload, or a bare pickle stream (protocol 2, as legacy torch files; protocol 4, pickle's default)."""
    state = {"model": {"backbone.stem.conv1.weight": torch.zeros(2)}, "payload": Payload(marker)}
    if kind == "torch_zip":
        torch.save(state, path)
    else:
        with open(path, "wb") as f:
            pickle.dump(state, f, protocol=2 if kind == "pickle2" else 4)
    return path


MALICIOUS_KINDS = ("torch_zip", "pickle2", "pickle4")


def assert_refused_clearly(err: BaseException, path: Path, marker: Path) -> None:
    msg = str(err)
    assert not marker.exists(), "the checkpoint's code ran"
    assert str(path) in msg and "pickled Python objects" in msg and "never loads" in msg, msg
    assert not any(a in msg for a in UNSAFE_ADVICE), msg


def test_the_payload_is_live(tmp_path):
    """The stand-in attack works when unpickled, so the tests below would see it run."""
    marker = tmp_path / "marker"
    pickle.loads(pickle.dumps(Payload(marker)))
    assert marker.read_text() == "pwned"


@pytest.fixture(scope="module")
def small_sd():
    torch.manual_seed(0)
    return {k: v.clone() for k, v in build_univs(get_config("small")).state_dict().items()}


def official_pth(path: Path, sd: dict) -> Path:
    torch.save({"model": sd, "iteration": 1}, path)
    return path


def converted_safetensors(path: Path, sd: dict) -> Path:
    save_file({k: v.contiguous() for k, v in sd.items()}, str(path),
              metadata={"univs_config": "small", "source": "x.pth", "ema": "false"})
    return path


@pytest.fixture(scope="module")
def builtin_file():
    """The shipped single-file layout (network + text encoder + class embeddings, metadata)."""
    path = small_model_path()
    with safe_open(str(path), "pt") as f:
        meta = f.metadata()
    return load_file(str(path)), meta


def builtin_variant(path: Path, builtin_file, edit) -> Path:
    tensors, meta = builtin_file
    tensors = dict(tensors)
    edit(tensors)
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(path), metadata=meta)
    return path


def tiny_config(**kw) -> state_mod.TrainConfig:
    base = dict(iterations=2, stage3_iterations=0, size=64, batch_images=1, batch_clips=1, video_frames=4,
                max_prompts=2, warmup=1, stage1_fraction=0.5, clip_len=2, log_every=1, pretrain_iterations=0,
                token_rows=False, loss=LossConfig(match_points=128, loss_points=128, prompt_tokens=16, templates=2))
    base.update(kw)
    return state_mod.TrainConfig(**base)


def resume(out: Path) -> dict:
    """Continue the run in `out` (quietly, no export)."""
    return train_mod.train(train_mod.TrainOptions(out, progress=False, threads=None, export=False))


@pytest.fixture(scope="module")
def train_run(tmp_path_factory):
    """A run stopped after 1 of 2 iterations: out/last.pt is a resumable training checkpoint."""
    out = tmp_path_factory.mktemp("run")
    train_mod.train(train_mod.TrainOptions(out, config=tiny_config(), progress=False, threads=None, stop_after=1,
                                           export=False))
    return out


def node_runtime():
    load_pack()
    from univs_pack.nodes import runtime

    return runtime


def copy_run(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


# ------------------------------------------------------------------------------------------ no code runs
@pytest.mark.parametrize("kind", MALICIOUS_KINDS)
def test_malicious_pth_through_load_model_and_convert(tmp_path, kind):
    marker = tmp_path / "marker"
    evil = write_malicious(tmp_path / "univs_r50.pth", marker, kind)
    with pytest.raises(CheckpointError) as info:
        load_model(evil)
    assert_refused_clearly(info.value, evil, marker)
    with pytest.raises(CheckpointError) as info:
        convert_checkpoint(evil, tmp_path / "out.safetensors")
    assert_refused_clearly(info.value, evil, marker)
    assert not (tmp_path / "out.safetensors").exists()


@pytest.mark.parametrize("kind", MALICIOUS_KINDS)
def test_malicious_pth_through_the_node_conversion(tmp_path, kind):
    runtime = node_runtime()
    marker = tmp_path / "marker"
    evil = write_malicious(tmp_path / "univs_r50.pth", marker, kind)
    with pytest.raises(CheckpointError) as info:  # refused, not "fallen back" to the .pth
        runtime.converted_checkpoint(str(evil))
    assert_refused_clearly(info.value, evil, marker)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["univs_r50.pth"]


@pytest.mark.parametrize("kind", MALICIOUS_KINDS)
def test_malicious_training_checkpoint_through_resume(tmp_path, kind, capsys):
    marker = tmp_path / "marker"
    out = tmp_path / "run"
    out.mkdir()
    evil = write_malicious(out / "last.pt", marker, kind)
    with pytest.raises(CheckpointError) as info:
        resume(out)
    assert_refused_clearly(info.value, evil, marker)
    # `univs train --out DIR`: one line on stderr, exit code 2, no traceback
    assert train_mod.main(["--out", str(out), "--no-progress", "--threads", "1"]) == 2
    err = capsys.readouterr().err
    assert "univs train: error:" in err and "Traceback" not in err
    assert_refused_clearly(Exception(err), evil, marker)
    with pytest.raises(CheckpointError) as info:
        export_checkpoint(evil, tmp_path / "x.safetensors")
    assert_refused_clearly(info.value, evil, marker)


@pytest.mark.parametrize("kind", MALICIOUS_KINDS)
def test_malicious_training_checkpoint_through_evaluate(tmp_path, kind, capsys):
    marker = tmp_path / "marker"
    evil = write_malicious(tmp_path / "X.pt", marker, kind)
    assert eval_mod.main([str(evil), "--videos", "1", "--frames", "2"]) == 2  # python -m univs_train.evaluate X.pt
    err = capsys.readouterr().err
    assert "Traceback" not in err
    assert_refused_clearly(Exception(err), evil, marker)


@pytest.mark.parametrize("kind", MALICIOUS_KINDS)
def test_malicious_text_encoder_and_embedding_files_through_load_model(tmp_path, small_sd, kind):
    from univs_engine.modeling.text_encoder import TextEncoderLoadError

    ckpt = official_pth(tmp_path / "univs_small.pth", small_sd)
    marker = tmp_path / "marker"
    evil = write_malicious(tmp_path / "text.pth", marker, kind)
    for kw in ({"text_encoder": evil}, {"class_embeddings": evil}):
        with pytest.raises(TextEncoderLoadError) as info:
            load_model(ckpt, **kw)
        assert_refused_clearly(info.value, evil, marker)


def test_non_finite_text_encoder_and_embedding_files_are_refused(tmp_path, small_sd):
    from univs_engine.modeling.text_encoder import TextEncoder

    ckpt = official_pth(tmp_path / "univs_small.pth", small_sd)
    te = TextEncoder(get_config("small").text).state_dict()
    te["positional_embedding"] = te["positional_embedding"].clone().fill_(float("nan"))
    torch.save(te, tmp_path / "text.pth")
    with pytest.raises(CheckpointError, match="text encoder file .*text.pth: tensor positional_embedding holds NaN"):
        load_model(ckpt, text_encoder=tmp_path / "text.pth")
    emb = torch.zeros(3938, 640)
    emb[5, 3] = float("inf")
    torch.save(emb, tmp_path / "emb.pth")
    with pytest.raises(CheckpointError, match="category embedding file .*emb.pth: tensor embeddings holds inf"):
        load_model(ckpt, class_embeddings=tmp_path / "emb.pth")


def test_random_bytes_are_not_called_python_objects(tmp_path):
    """A file that is no pickle at all gets "not readable", not the pickled-code message, and never torch's
    advice to retry with weights_only=False."""
    path = tmp_path / "random.bin"
    path.write_bytes(bytes(range(256)) * 64)
    with pytest.raises(CheckpointError) as info:
        load_model(path)
    msg = str(info.value)
    assert str(path) in msg and "not a readable PyTorch checkpoint" in msg and "Python objects" not in msg, msg
    assert not any(a in msg for a in UNSAFE_ADVICE), msg


def _calls(tree: ast.AST, names: set[str]):
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            f = node.func
            dotted = ast.unparse(f) if isinstance(f, (ast.Attribute, ast.Name)) else ""
            if dotted in names:
                yield node


def _project_files(*folders: str):
    for folder in folders:
        for path in sorted((ROOT / folder).rglob("*.py")):
            if "reference_reduced" not in path.parts and "__pycache__" not in path.parts:
                yield path


def test_every_torch_load_in_the_repository_is_weights_only():
    """Every torch.load( call of univs_engine/, nodes/, tools/ and tests/ passes weights_only=True (a literal
    True: the one setting under which unpickling cannot run code); the project code never unpickles itself."""
    bad = []
    files = list(_project_files("univs_engine", "nodes", "tools", "tests"))
    assert len(files) > 20
    for path in files:
        tree = ast.parse(path.read_text(), str(path))
        for call in _calls(tree, {"torch.load", "torch.serialization.load", "load"}):
            if ast.unparse(call.func) == "load" and not _imports_torch_load(tree):
                continue
            kw = {k.arg: k.value for k in call.keywords}
            ok = isinstance(kw.get("weights_only"), ast.Constant) and kw["weights_only"].value is True
            if not ok:
                bad.append(f"{path.relative_to(ROOT)}:{call.lineno}: {ast.unparse(call)[:120]}")
        if path.parts[-2] != "tests" and "tests" not in path.relative_to(ROOT).parts:
            for call in _calls(tree, {"pickle.load", "pickle.loads", "pickle.Unpickler", "dill.load", "dill.loads"}):
                bad.append(f"{path.relative_to(ROOT)}:{call.lineno}: {ast.unparse(call)[:120]}")
    assert bad == []


def _imports_torch_load(tree: ast.AST) -> bool:
    return any(isinstance(n, ast.ImportFrom) and n.module in ("torch", "torch.serialization")
               and any(a.name == "load" for a in n.names) for n in ast.walk(tree))


def test_nothing_turns_weights_only_off_or_advises_it():
    """No call of the project passes weights_only other than True (a partial, a wrapper), and no string
    tells a user to load with weights_only=False (torch's advice is never passed on: see the tests above)."""
    bad = []
    for path in _project_files("univs_engine", "nodes", "tools"):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.keyword) and node.arg == "weights_only":
                if not (isinstance(node.value, ast.Constant) and node.value.value is True):
                    bad.append(f"{path.relative_to(ROOT)}:{node.value.lineno}: weights_only={ast.unparse(node.value)}")
            if isinstance(node, ast.Constant) and isinstance(node.value, str):
                text = node.value.replace(" ", "").replace("`", "")
                if "weights_only=False" in text or "weights_onlysettoFalse" in text:
                    bad.append(f"{path.relative_to(ROOT)}:{node.lineno}: {node.value[:80]!r}")
    assert bad == []


# ------------------------------------------------------------------------------------------ broken weights
BAD_VALUES = {
    "nan": lambda v: v.clone().index_fill_(0, torch.tensor([0]), float("nan")),
    "inf": lambda v: v.clone().index_fill_(0, torch.tensor([0]), float("inf")),
    "int64": lambda v: torch.zeros(v.shape, dtype=torch.int64),
    "bool": lambda v: torch.zeros(v.shape, dtype=torch.bool),
}
BAD_KEY = "sem_seg_head.predictor.query_feat.weight"
BAD_MATCH = {"nan": r"NaN", "inf": r"inf", "int64": r"int64 but .* expects floating point",
             "bool": r"bool but .* expects floating point"}


def _bad_file(fmt: str, tmp_path: Path, sd: dict, builtin_file, edit) -> Path:
    if fmt == "pth":
        d = dict(sd)
        edit(d)
        return official_pth(tmp_path / "bad.pth", d)
    if fmt == "safetensors":
        d = dict(sd)
        edit(d)
        return converted_safetensors(tmp_path / "bad.safetensors", d)
    return builtin_variant(tmp_path / "bad_builtin.safetensors", builtin_file, edit)


@pytest.mark.parametrize("fmt", ["pth", "safetensors", "builtin"])
@pytest.mark.parametrize("bad", sorted(BAD_VALUES))
def test_non_finite_or_integer_weights_are_refused_naming_the_key(tmp_path, small_sd, builtin_file, fmt, bad):
    def edit(d):
        d[BAD_KEY] = BAD_VALUES[bad](d[BAD_KEY])

    path = _bad_file(fmt, tmp_path, small_sd, builtin_file, edit)
    with pytest.raises(CheckpointError, match=BAD_MATCH[bad]) as info:
        load_model(path)
    msg = str(info.value)
    assert str(path) in msg and BAD_KEY in msg, msg
    if fmt == "pth":  # conversion refuses them too (and writes nothing)
        with pytest.raises(CheckpointError, match=BAD_MATCH[bad]):
            convert_checkpoint(path, tmp_path / "out.safetensors")
        assert not (tmp_path / "out.safetensors").exists()


def test_broken_text_encoder_or_class_embeddings_of_the_builtin_file(tmp_path, builtin_file):
    key = "text_encoder.positional_embedding"
    path = builtin_variant(tmp_path / "a.safetensors", builtin_file,
                           lambda d: d.update({key: torch.full_like(d[key], float("nan"))}))
    with pytest.raises(CheckpointError, match=f"{key}.*NaN"):
        load_model(path)
    path = builtin_variant(tmp_path / "b.safetensors", builtin_file,
                           lambda d: d.update({"class_embeddings": d["class_embeddings"].clone().fill_(float("inf"))}))
    with pytest.raises(CheckpointError, match="class_embeddings.*inf"):
        load_model(path)
    path = builtin_variant(tmp_path / "c.safetensors", builtin_file,
                           lambda d: d.update({"class_embeddings": d["class_embeddings"][:5]}))
    with pytest.raises(CheckpointError, match=r"class_embeddings has shape \(5, "):
        load_model(path)


# ------------------------------------------------------------------------------------------ mismatches
def _drop(n):
    def edit(d):
        for k in [k for k in d if k.startswith("sem_seg_head.predictor.")][:n]:
            del d[k]
    return edit


MISMATCHES = {
    "missing": (_drop(7), r"7 missing: sem_seg_head\.predictor\.\S+, .*\(\+2 more\)"),
    "unexpected": (lambda d: d.update({"sem_seg_head.predictor.extra.weight": torch.zeros(3)}),
                   r"1 unexpected: sem_seg_head\.predictor\.extra\.weight"),
    "shape": (lambda d: d.update({BAD_KEY: torch.zeros(3, 5)}),
              rf"1 with other shapes: {BAD_KEY} \(3, 5\) vs model"),
}


@pytest.mark.parametrize("fmt", ["pth", "safetensors", "builtin"])
@pytest.mark.parametrize("case", sorted(MISMATCHES))
def test_load_mismatches_are_checkpoint_errors_listing_the_keys(tmp_path, small_sd, builtin_file, fmt, case):
    edit, match = MISMATCHES[case]
    path = _bad_file(fmt, tmp_path, small_sd, builtin_file, edit)
    with pytest.raises(CheckpointError, match=match) as info:
        load_model(path)
    assert str(path) in str(info.value)


def test_builtin_file_with_a_stray_key_outside_the_model(tmp_path, builtin_file):
    path = builtin_variant(tmp_path / "x.safetensors", builtin_file, lambda d: d.update({"mystery": torch.zeros(1)}))
    with pytest.raises(CheckpointError, match="1 unexpected: mystery"):
        load_model(path)
    path = builtin_variant(tmp_path / "y.safetensors", builtin_file,
                           lambda d: d.pop("text_encoder.positional_embedding"))
    with pytest.raises(CheckpointError, match="text encoder: 1 missing: text_encoder.positional_embedding"):
        load_model(path)


# ------------------------------------------------------------------------------------------ conversion targets
def _fail_mkstemp(code):
    def fake(*a, **k):
        raise OSError(code, os.strerror(code))
    return fake


def _partial_then(exc):
    def fake(tensors, filename, *a, **k):
        Path(filename).write_bytes(b"partial bytes")
        raise exc
    return fake


def _assert_write_refused(info, dst: Path, reason: str):
    msg = str(info.value)
    assert isinstance(info.value, CheckpointError) and isinstance(info.value, OSError)
    assert "\n" not in msg and str(dst) in msg and reason in msg, msg
    assert not dst.exists() or dst.is_dir()
    leftovers = [p.name for p in dst.parent.iterdir() if p.name.startswith(f".{dst.name}.")] if dst.parent.is_dir() else []
    assert leftovers == []


CONVERT_FAILURES = {
    "unwritable": (lambda mp: mp.setattr(tempfile, "mkstemp", _fail_mkstemp(errno.EACCES)), "permission denied"),
    "read_only_fs": (lambda mp: mp.setattr(tempfile, "mkstemp", _fail_mkstemp(errno.EROFS)), "read-only file system"),
    "disk_full": (lambda mp: mp.setattr(ckpt_mod, "save_file", _partial_then(OSError(errno.ENOSPC, "No space"))),
                  "no space left on device"),
    "disk_full_safetensors": (lambda mp: mp.setattr(ckpt_mod, "save_file", _partial_then(SafetensorError(
        "Error while serializing: I/O error: No space left on device (os error 28)"))), "no space left on device"),
}


@pytest.mark.parametrize("case", sorted(CONVERT_FAILURES))
def test_convert_into_a_destination_that_cannot_be_written(tmp_path, small_sd, case, monkeypatch, capsys):
    src = official_pth(tmp_path / "univs_small.pth", small_sd)
    dst = tmp_path / "out" / "univs_small.safetensors"
    dst.parent.mkdir()
    patch, reason = CONVERT_FAILURES[case]
    patch(monkeypatch)
    with pytest.raises(CheckpointWriteError) as info:
        convert_checkpoint(src, dst)
    _assert_write_refused(info, dst, reason)
    assert info.value.errno in (errno.EACCES, errno.EROFS, errno.ENOSPC)
    # `univs convert`: one line, exit code 2
    from univs_engine.cli import main as cli_main

    assert cli_main(["convert", str(src), str(dst)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("univs: error: cannot write") and reason in err and "\n" not in err
    assert sorted(p.name for p in dst.parent.iterdir()) == []


@pytest.mark.skipif(os.name != "posix" or os.geteuid() == 0, reason="root writes into read-only folders")
def test_convert_into_a_really_unwritable_folder(tmp_path, small_sd):
    src = official_pth(tmp_path / "univs_small.pth", small_sd)
    folder = tmp_path / "ro"
    folder.mkdir()
    folder.chmod(0o500)
    try:
        with pytest.raises(CheckpointWriteError, match="permission denied") as info:
            convert_checkpoint(src, folder / "x.safetensors")
        _assert_write_refused(info, folder / "x.safetensors", "permission denied")
    finally:
        folder.chmod(0o700)


@pytest.mark.parametrize("overwrite", [False, True])
def test_convert_onto_a_folder(tmp_path, small_sd, overwrite):
    src = official_pth(tmp_path / "univs_small.pth", small_sd)
    dst = tmp_path / "models"
    dst.mkdir()
    with pytest.raises(CheckpointWriteError, match="it is a folder") as info:
        convert_checkpoint(src, dst, overwrite=overwrite)
    _assert_write_refused(info, dst, "it is a folder")
    assert dst.is_dir() and list(dst.iterdir()) == []


NODE_FAILURES = {
    "read_only_fs": lambda mp, dst: mp.setattr(tempfile, "mkstemp", _fail_mkstemp(errno.EROFS)),
    "unwritable": lambda mp, dst: mp.setattr(tempfile, "mkstemp", _fail_mkstemp(errno.EACCES)),
    "disk_full": lambda mp, dst: mp.setattr(ckpt_mod, "save_file", _partial_then(OSError(errno.ENOSPC, "No space"))),
    "folder_in_the_way": lambda mp, dst: dst.mkdir(),
}


@pytest.mark.parametrize("case", sorted(NODE_FAILURES))
def test_node_conversion_falls_back_to_the_pth(tmp_path, small_sd, case, monkeypatch, caplog):
    runtime = node_runtime()
    src = official_pth(tmp_path / "univs_small_stage3.pth", small_sd)
    dst = tmp_path / "univs_small_stage3.safetensors"
    NODE_FAILURES[case](monkeypatch, dst)
    with caplog.at_level(logging.WARNING, logger="univs"):
        assert runtime.converted_checkpoint(str(src)) == str(src)
    assert any(str(dst) in r.getMessage() and "cannot write" in r.getMessage() for r in caplog.records), caplog.text
    assert not dst.is_file()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(f".{dst.name}.")]
    monkeypatch.undo()
    assert load_checkpoint(src).cfg.name == "small"  # the .pth it fell back to loads


# ------------------------------------------------------------------------------------------ training state
def test_training_state_is_safetensors_and_json_and_resumes_exactly(tmp_path, train_run):
    """last.pt holds no pickle: tensors in a safetensors file, the rest JSON in its metadata. A run resumed
    from it matches one resumed from the same state written the pre-safetensors way (torch.save, read back
    with weights_only=True): the format changes nothing of the state."""
    last = train_run / "last.pt"
    assert ckpt_mod.looks_like_safetensors(last)
    with safe_open(str(last), "pt") as f:
        meta = f.metadata()
        assert meta["format"] == state_mod.STATE_FORMAT and "rng/torch" in set(f.keys())
    tree = json.loads(meta["state"])
    assert tree["iteration"] == 1 and tree["train_config"]["iterations"] == 2

    a = copy_run(train_run, tmp_path / "a")
    b = copy_run(train_run, tmp_path / "b")
    state = state_mod.read_state_file(b / "last.pt")
    assert isinstance(state["rng"]["python"], tuple) and isinstance(next(iter(state["optimizer"]["state"])), int)
    torch.save(state, b / "last.pt")  # the layout every earlier run wrote
    for run in (a, b):
        assert resume(run)["iteration"] == 2
    sa, sb = (state_mod.load_training_checkpoint(r / "last.pt") for r in (a, b))
    for k in sa["model"]:
        assert torch.equal(sa["model"][k], sb["model"][k]), k
    assert sa["history"][-1]["total"] == sb["history"][-1]["total"]
    assert torch.equal(sa["rng"]["generator"], sb["rng"]["generator"])


def _edited_run(src: Path, dst: Path, edit) -> Path:
    copy_run(src, dst)
    state = state_mod.read_state_file(dst / "last.pt")
    edit(state)
    state_mod.write_state_file(state, dst / "last.pt")
    return dst / "last.pt"


TRAIN_KEY = "univs.sem_seg_head.predictor.query_feat.weight"


@pytest.mark.parametrize("bad", ["nan", "inf", "int64"])
def test_broken_training_checkpoint_is_refused_naming_the_key(tmp_path, train_run, bad, capsys):
    last = _edited_run(train_run, tmp_path / "run",
                       lambda s: s["model"].update({TRAIN_KEY: BAD_VALUES[bad](s["model"][TRAIN_KEY])}))
    with pytest.raises(CheckpointError, match=BAD_MATCH[bad]) as info:
        resume(last.parent)
    assert str(last) in str(info.value) and TRAIN_KEY in str(info.value)
    assert eval_mod.main([str(last), "--videos", "1", "--frames", "2"]) == 2
    err = capsys.readouterr().err
    assert TRAIN_KEY in err and str(last) in err and "Traceback" not in err


def test_broken_optimizer_state_and_malformed_training_files(tmp_path, train_run):
    def poison(s):
        moments = next(iter(s["optimizer"]["state"].values()))
        moments["exp_avg_sq"] = torch.full_like(moments["exp_avg_sq"], float("nan"))

    last = _edited_run(train_run, tmp_path / "opt", poison)
    with pytest.raises(CheckpointError, match=r"optimizer\.state\.\d+\.exp_avg_sq holds NaN"):
        resume(last.parent)
    last = _edited_run(train_run, tmp_path / "nomodel", lambda s: s.pop("model"))
    with pytest.raises(CheckpointError, match="'model' is missing"):
        resume(last.parent)
    last = _edited_run(train_run, tmp_path / "shape",
                       lambda s: s["model"].update({TRAIN_KEY: torch.zeros(2, 2)}))
    with pytest.raises(CheckpointError, match=rf"1 with other shapes: {TRAIN_KEY} \(2, 2\)"):
        resume(last.parent)
    other = tmp_path / "other" / "last.pt"
    other.parent.mkdir()
    save_file({"x": torch.zeros(1)}, str(other))
    with pytest.raises(CheckpointError, match="not a UniVS training state"):
        state_mod.load_training_checkpoint(other)
    cut = tmp_path / "cut" / "last.pt"
    cut.parent.mkdir()
    cut.write_bytes((train_run / "last.pt").read_bytes()[:5000])
    with pytest.raises(CheckpointError, match="not readable"):
        state_mod.load_training_checkpoint(cut)


def test_training_checkpoint_write_failure_keeps_the_previous_one(tmp_path, train_run, monkeypatch):
    run = copy_run(train_run, tmp_path / "run")
    before = (run / "last.pt").read_bytes()
    monkeypatch.setattr(state_mod, "save_file", _partial_then(OSError(errno.ENOSPC, "No space")))
    with pytest.raises(CheckpointWriteError, match="no space left on device"):
        resume(run)
    assert (run / "last.pt").read_bytes() == before
    assert not [p for p in run.iterdir() if p.name.endswith(".tmp")]
