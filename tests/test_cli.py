"""`univs segment` for all six tasks on the bundled sample with the shipped model, `univs eval`, and how a
run ends early: SIGINT / SIGTERM and a truncated video keep the frames finished, marked partial."""
import json
import os
import re
import signal
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from univs_engine.cli import main
from univs_engine.results import Tracks

ROOT = Path(__file__).resolve().parents[1]
SAMPLE = ROOT / "assets" / "sample.mp4"
FRAMES = 20  # covers every prompt frame of the sample (0 and 17)


@pytest.mark.parametrize("task", ["vos", "pvos", "refvos", "vis", "vss", "vps"])
def test_segment_writes_outputs_for_every_task(task, tmp_path, capsys):
    out = tmp_path / task
    args = ["segment", str(SAMPLE), "--task", task, "--out", str(out), "--stop", str(FRAMES)]
    if task in ("vos", "pvos", "refvos"):
        args += ["--prompts", str(ROOT / "assets" / "sample.json")]
    assert main(args) == 0
    tracks = Tracks.load(out / "tracks.npz")
    assert (tracks.num_frames, tracks.height, tracks.width) == (48, 240, 320)
    assert tracks.segmented_frames() == list(range(FRAMES))  # --stop is honoured by every task
    legend = json.loads((out / "legend.json").read_text())
    assert legend["partial"] is False and legend["segmented_frames"] == [[0, FRAMES - 1]]
    assert [e["id"] for e in legend["objects"]] == tracks.object_ids
    ids = sorted((out / "ids").glob("*.png"))
    assert [p.name for p in ids] == [f"{f:05d}.png" for f in range(FRAMES)]  # no blank PNG for frames not run
    assert (out / "preview.mp4").stat().st_size > 0
    umask = os.umask(0)
    os.umask(umask)
    assert (out / "legend.json").stat().st_mode & 0o777 == 0o666 & ~umask  # ordinary permissions
    assert (out / "tracks.npz").stat().st_mode & 0o777 == 0o666 & ~umask
    assert (out / "ids").stat().st_mode & 0o777 == 0o777 & ~umask
    if task in ("vos", "pvos", "refvos"):
        assert tracks.object_ids == [1, 2, 3]  # the sidecar's targets
        assert (out / "masks").is_dir()
    else:
        assert (out / "color").is_dir()
        assert all(e["label"] for e in legend["objects"])
    if task == "vis":
        results = json.loads((out / "results.json").read_text())
        assert isinstance(results, list)
        assert all(len(r["segmentations"]) == 48 and r["segmentations"][FRAMES:] == [None] * (48 - FRAMES)
                   for r in results)  # frames never processed are null, not empty masks
        # below the task's class threshold (0.05 for the small model): in results.json, not drawn
        assert tracks.min_score == legend["min_score"] == 0.05 and len(results) == len(tracks.object_ids)
        shown = tracks.shown_ids()
        assert [e["shown"] for e in legend["objects"]] == [o in shown for o in tracks.object_ids]
        drawn = set().union(*(np.unique(np.asarray(Image.open(p))).tolist() for p in ids)) - {0}
        assert drawn <= set(shown)
        hidden = len(tracks.object_ids) - len(shown)
        said = f"{hidden} of {len(tracks.object_ids)} objects scored below the threshold 0.05"
        assert (said in capsys.readouterr().out) == (hidden > 0)
    else:
        assert tracks.min_score == legend["min_score"] == 0 and all(e["shown"] for e in legend["objects"])


@pytest.mark.parametrize("task", ["vis", "vss", "vps"])
def test_category_tasks_segment_exactly_the_frames_from_start_to_stop(task, tmp_path):
    """--start/--stop reach the category-guided tasks: frames [start, stop) are segmented and written, no other."""
    out, start, stop = tmp_path / task, 5, 12
    assert main(["segment", str(SAMPLE), "--task", task, "--out", str(out), "--start", str(start), "--stop",
                 str(stop)]) == 0
    tracks = Tracks.load(out / "tracks.npz")
    assert tracks.num_frames == 48 and tracks.segmented_frames() == list(range(start, stop))
    assert tracks.object_ids and all(start <= f < stop for o in tracks.object_ids for f in tracks.frames_with(o))
    legend = json.loads((out / "legend.json").read_text())
    assert legend["partial"] is False and legend["segmented_frames"] == [[start, stop - 1]]
    names = [f"{f:05d}.png" for f in range(start, stop)]
    assert [p.name for p in sorted((out / "ids").glob("*.png"))] == names
    assert [p.name for p in sorted((out / "color").glob("*.png"))] == names
    if task == "vis":
        for r in json.loads((out / "results.json").read_text()):
            segs = r["segmentations"]
            assert segs[:start] == [None] * start and segs[stop:] == [None] * (48 - stop)


def test_segment_refuses_to_overwrite_and_reports_bad_prompts(tmp_path, capsys):
    out = tmp_path / "o"
    base = ["segment", str(SAMPLE), "--out", str(out), "--stop", "4"]
    assert main(base + ["--box", "10,10,50,50"]) == 0
    assert main(base + ["--box", "10,10,50,50"]) == 2
    assert "already holds" in capsys.readouterr().err
    assert main(base + ["--overwrite", "--points", "900,10"]) == 2
    assert "outside" in capsys.readouterr().err
    assert main(base + ["--overwrite"]) == 2
    assert "no prompt" in capsys.readouterr().err


def _write_labels(root, video, labels):
    d = root / video
    d.mkdir(parents=True)
    for t, lab in enumerate(labels):
        Image.fromarray(lab.astype(np.uint8)).save(d / f"{t:05d}.png")


def test_train_runs_the_trainer_next_to_the_package(tmp_path):
    """`univs train` in a clone (editable install, ComfyUI's git clone) loads univs_train/ from beside the engine,
    without putting the repository root (and its `nodes/`) on sys.path."""
    code = ("import sys\nfrom univs_engine.cli import main\ntry:\n    main(['train', '--help'])\n"
            "except SystemExit as e:\n    print('exit', e.code, sys.modules['univs_train'].__file__, "
            f"{str(ROOT)!r} in sys.path)")
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path, timeout=300)
    assert "usage: univs train" in run.stdout, run.stderr
    assert run.stdout.splitlines()[-1] == f"exit 0 {ROOT / 'univs_train' / '__init__.py'} False"


def test_train_without_a_clone_says_so_on_one_line(tmp_path, monkeypatch, capsys):
    from univs_engine import cli

    monkeypatch.setattr(cli, "__file__", str(tmp_path / "site-packages" / "univs_engine" / "cli.py"))  # a wheel install
    assert main(["train", "--out", str(tmp_path / "run")]) == 2
    out, err = capsys.readouterr()
    assert out == "" and err.count("\n") == 1 and "univs train: error: training needs a clone of the repository" in err
    assert not (tmp_path / "run").exists()


def test_eval_davis_folders(tmp_path, capsys):
    gt = np.zeros((4, 20, 20), np.uint8)
    gt[:, 2:10, 2:10] = 1
    gt[:, 12:18, 12:18] = 2
    pred = gt.copy()
    pred[pred == 2] = 0  # object 2 lost: J = F = 0 on the evaluated frames, object 1 perfect
    _write_labels(tmp_path / "gt", "v", gt)
    _write_labels(tmp_path / "pred", "v", pred)
    assert main(["eval", "davis", "--gt", str(tmp_path / "gt"), "--pred", str(tmp_path / "pred")]) == 0
    scores = dict(line.split() for line in capsys.readouterr().out.strip().splitlines())
    assert float(scores["J&F"]) == pytest.approx(0.5)


def test_eval_ytvis_json(tmp_path, capsys):
    from univs_engine.rle import encode_coco

    m = np.zeros((3, 16, 16), bool)
    m[:, 4:12, 4:12] = True
    segs = [{**encode_coco(f), "counts": encode_coco(f)["counts"]} for f in m]
    gt = {"videos": [{"id": 1, "height": 16, "width": 16, "length": 3}], "categories": [{"id": 1}],
          "annotations": [{"video_id": 1, "category_id": 1, "segmentations": segs, "iscrowd": 0}]}
    (tmp_path / "gt.json").write_text(json.dumps(gt))
    (tmp_path / "res.json").write_text(json.dumps([{"video_id": 1, "category_id": 1, "score": 0.9,
                                                     "segmentations": segs}]))
    assert main(["eval", "ytvis", "--gt", str(tmp_path / "gt.json"), "--pred", str(tmp_path / "res.json")]) == 0
    scores = dict(line.split() for line in capsys.readouterr().out.strip().splitlines())
    assert float(scores["AP"]) == pytest.approx(1.0)


def _long_video(path, n=2000):
    from univs_engine.io.writers import OverlayVideoWriter

    frames = np.zeros((n, 96, 128, 3), np.uint8)  # far more frames than the test lets run
    for t in range(n):
        frames[t, 20:50, (t % 90):(t % 90) + 30] = (220, 60, 40)  # colour: the built-in model refuses grey video
    with OverlayVideoWriter(path, 128, 96, 25, overwrite=True, crf=28) as writer:
        for frame in frames:
            writer.write(frame)


class StderrWatch:
    """Reads a child's stderr in a thread; wait_for(pattern) blocks until the pattern appears (tqdm redraws with
    carriage returns, so lines are not waited for)."""

    def __init__(self, proc):
        self.text, self._changed = "", threading.Condition()
        self._thread = threading.Thread(target=self._read, args=(proc.stderr,), daemon=True)
        self._thread.start()

    def _read(self, stream):
        while chunk := os.read(stream.fileno(), 4096):
            with self._changed:
                self.text += chunk.decode(errors="replace")
                self._changed.notify_all()
        with self._changed:
            self.text += "\0"  # end of stream
            self._changed.notify_all()

    def wait_for(self, pattern, timeout):
        with self._changed:
            ok = self._changed.wait_for(lambda: re.search(pattern, self.text) or "\0" in self.text, timeout)
        return bool(ok) and re.search(pattern, self.text) is not None

    def rest(self, timeout):
        self._thread.join(timeout)
        return self.text


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_a_signal_stops_after_the_current_clip_and_writes_the_finished_frames(tmp_path, sig):
    """Waits for the first progress line (a finished frame), then signals; the old test slept 10 s instead."""
    _long_video(tmp_path / "long.mp4")
    out = tmp_path / "out"
    proc = subprocess.Popen([sys.executable, "-m", "univs_engine.cli", "segment", str(tmp_path / "long.mp4"),
                             "--box", "0,20,30,50", "--out", str(out)], stderr=subprocess.PIPE, cwd=ROOT)
    watch = StderrWatch(proc)
    try:
        assert watch.wait_for(r"\| *[1-9][0-9]*/2000 ", timeout=600), watch.text[-2000:]
        proc.send_signal(sig)
        assert proc.wait(timeout=600) == 128 + sig
    finally:
        proc.kill()
    err = watch.rest(60)
    name = signal.Signals(sig).name
    assert f"\nunivs: stopped by {name}; wrote the" in err and "marked partial" in err, err[-2000:]
    legend = json.loads((out / "legend.json").read_text())
    tracks = Tracks.load(out / "tracks.npz")
    done = tracks.segmented_frames()
    assert legend["partial"] is True and legend["stopped_by"] == name
    assert done == list(range(len(done))) and 0 < len(done) < 2000 and legend["segmented_frames"] == [[0, done[-1]]]
    # only the processed frames are written: no blank masks for the rest
    assert sorted(os.listdir(out / "ids")) == [f"{f:05d}.png" for f in done]
    assert sorted(os.listdir(out / "masks" / "1")) == [f"{f:05d}.png" for f in done]
    assert tracks.frames_with(1)[0] == 0
    assert not [n for n in os.listdir(out) if n.startswith(".")]  # no temp files left behind


def test_a_truncated_video_stops_cleanly_and_keeps_the_frames_before_the_bad_one(tmp_path):
    """A corrupt frame mid-video ended the run with nothing written."""
    from univs_engine.io.video import VideoSource
    from univs_engine.io.writers import OverlayVideoWriter

    rng = np.random.default_rng(0)
    with OverlayVideoWriter(tmp_path / "full.mp4", 128, 96, 25) as w:  # faststart: the index precedes the data
        for t in range(24):
            f = rng.integers(0, 255, (96, 128, 3), dtype=np.uint8)
            f[20:50, t * 3:t * 3 + 30] = 220
            w.write(f)
    data = (tmp_path / "full.mp4").read_bytes()
    (tmp_path / "cut.mp4").write_bytes(data[: int(len(data) * 0.6)])
    with pytest.raises(ValueError, match=r"frame (\d+) could not be decoded") as e:  # the precondition
        list(VideoSource(tmp_path / "cut.mp4").iter_frames())
    bad = int(re.search(r"frame (\d+)", str(e.value)).group(1))
    proc = subprocess.run([sys.executable, "-m", "univs_engine.cli", "segment", str(tmp_path / "cut.mp4"), "--box",
                           "0,20,30,50", "--out", str(tmp_path / "out")], capture_output=True, text=True,
                          timeout=900, cwd=ROOT)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert f"\nunivs: error: stopped at frame {bad}: " in proc.stderr and "marked partial" in proc.stderr
    done = Tracks.load(tmp_path / "out" / "tracks.npz").segmented_frames()
    assert done and done == list(range(len(done))) and done[-1] < bad
    assert sorted(os.listdir(tmp_path / "out" / "ids")) == [f"{f:05d}.png" for f in done]
    legend = json.loads((tmp_path / "out" / "legend.json").read_text())
    assert legend["partial"] is True and legend["stopped_by"].startswith(f"stopped at frame {bad}")
