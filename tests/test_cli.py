"""`univs segment` for all six tasks on the bundled sample with the shipped model, and `univs eval`."""
import json
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
def test_segment_writes_outputs_for_every_task(task, tmp_path):
    out = tmp_path / task
    args = ["segment", str(SAMPLE), "--task", task, "--out", str(out), "--stop", str(FRAMES)]
    if task in ("vos", "pvos", "refvos"):
        args += ["--prompts", str(ROOT / "assets" / "sample.json")]
    assert main(args) == 0
    tracks = Tracks.load(out / "tracks.npz")
    assert (tracks.num_frames, tracks.height, tracks.width) == (48, 240, 320)
    legend = json.loads((out / "legend.json").read_text())
    assert [e["id"] for e in legend] == tracks.object_ids
    ids = sorted((out / "ids").glob("*.png"))
    assert len(ids) == 48
    assert (out / "preview.mp4").stat().st_size > 0
    if task in ("vos", "pvos", "refvos"):
        assert tracks.object_ids == [1, 2, 3]  # the sidecar's targets
        assert (out / "masks").is_dir()
    else:
        assert (out / "color").is_dir()
        assert all(e["label"] for e in legend)
    if task == "vis":
        assert isinstance(json.loads((out / "results.json").read_text()), list)


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


def test_ctrl_c_stops_cleanly_and_keeps_finished_frames(tmp_path):
    import signal
    import subprocess
    import sys
    import time

    from univs_engine.data.synthetic import write_mp4

    frames = np.zeros((2000, 96, 128, 3), np.uint8)  # far more than 10 s of work
    for t in range(2000):
        frames[t, 20:50, (t % 90):(t % 90) + 30] = 220
    write_mp4(frames, tmp_path / "long.mp4", fps=25)
    out = tmp_path / "out"
    proc = subprocess.Popen([sys.executable, "-m", "univs_engine.cli", "segment", str(tmp_path / "long.mp4"),
                             "--box", "0,20,30,50", "--out", str(out)], stderr=subprocess.PIPE, text=True)
    time.sleep(10)  # model loaded and some frames done
    assert proc.poll() is None, "the run ended before it could be interrupted"
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err[-2000:]
    assert "stopped" in err
    tracks = Tracks.load(out / "tracks.npz")
    done = tracks.frames_with(1)  # frames with a non-empty mask of the target
    assert done and done[0] == 0 and done[-1] < 1999
    assert (out / "preview.mp4").exists()
