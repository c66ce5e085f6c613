"""`univs segment` refuses every user mistake with one line (exit status 2) that names the input, before any
frame is processed; it never writes through a symbolic link out of --out; partial results hold only the frames
that were processed. None of these tests runs the model (the run itself is covered by tests/test_cli.py)."""
import json
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image

from univs_engine import cli
from univs_engine.cli import main
from univs_engine.io import writers as W
from univs_engine.io.video import VideoSource
from univs_engine.results import Tracks

ROOT = Path(__file__).resolve().parents[1]
SAMPLE = ROOT / "assets" / "sample.mp4"


def one_line_error(capsys, argv, *words):
    rc = main(argv)
    err = capsys.readouterr().err
    assert rc == 2, err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
    for w in words:
        assert w in err, err
    return err


@pytest.fixture
def bad_files(tmp_path):
    (tmp_path / "bad.json").write_text('{"objects": [{"id": 1,')
    Image.fromarray(np.zeros((10, 10), np.uint8)).save(tmp_path / "small.png")
    (tmp_path / "junk.png").write_bytes(b"not an image")
    twice = {"id": 1, "prompt": {"frame": 0, "box": [1, 2, 30, 40]}}
    (tmp_path / "twice.json").write_text(json.dumps({"objects": [twice, twice]}))
    return tmp_path


@pytest.mark.parametrize("extra, words", [
    (["--points", "7"], ["argument --points", "x,y pairs"]),                   # was ArgumentTypeError traceback
    (["--box", "1,2,3"], ["argument --box", "4 numbers"]),                     # was ArgumentTypeError traceback
    (["--points", "abc"], ["argument --points", "'abc' is not a finite number"]),
    (["--points", "1e999,2"], ["argument --points", "'1e999'"]),
    (["--box", "5,5,1,1"], ["argument --box", "empty or inverted"]),
    (["--frame", "x", "--points", "1,1"], ["argument --frame", "whole number"]),
    (["--text", "label:"], ["argument --text", "no expression"]),
    (["--device", "tpu"], ["argument --device", "cpu, cuda or cuda:N"]),
    (["--task", "vis", "--points", "84,83"], ["--points does not apply to --task vis"]),  # ran 12 minutes
    (["--task", "vps", "--prompts", "x.json"], ["--prompts does not apply to --task vps"]),
    (["--task", "vss", "--direction", "both"], ["--direction does not apply"]),
    (["--task", "vis", "--classes", ""], ["argument --classes", "no class name"]),  # fell back to the default
    (["--task", "vis", "--classes", " , ,"], ["argument --classes", "no class name"]),
    (["--classes", "dog"], ["--classes applies to --task vis, vss or vps"]),
    (["--neg-points", "1,1"], ["--neg-points", "negative clicks alone"]),
    (["--frame", "3"], ["--frame applies to"]),
    ([], ["no prompt given"]),
    (["--frame", "60", "--points", "1,1"], ["--frame 60", "0..47"]),
    (["--start", "40", "--stop", "10", "--points", "1,1"], ["--start 40 --stop 10", "48 frames"]),
    (["--stop", "99", "--points", "1,1"], ["--stop 99"]),
    (["--points", "900,10"], ["--points: point (900, 10) lies outside the 320x240 frame"]),
    # the engine's rule (univs_engine/prompt_checks.py): a click at x = width was let through, then refused by
    # the engine after the model had loaded; a box past the frame likewise
    (["--points", "320,10"], ["--points: point (320, 10) lies outside the 320x240 frame", "0 <= x < 320"]),
    (["--points", "1,1", "--neg-points", "5,240"], ["--neg-points: point (5, 240) lies outside", "0 <= y < 240"]),
    (["--box", "300,200,321,240"], ["--box: box (300, 200, 321, 240) lies outside the 320x240 frame",
                                    "x1 <= 320"]),
    (["--box=-1,0,10,10"], ["--box: box (-1, 0, 10, 10) lies outside the 320x240 frame", "0 <= x0"]),
    (["--device", "cuda:99", "--points", "1,1"], ["--device cuda:99", "(available: cpu"]),
    (["--points", "1,1", "--matte-band", "4"], ["--matte-band", "add --alpha"]),
    (["--points", "1,1", "--alpha", "mov", "--matte-band", "999"], ["edge band", "outside 0..256"]),
])
def test_bad_options_end_in_one_line(capsys, tmp_path, extra, words):
    one_line_error(capsys, ["segment", str(SAMPLE), "--out", str(tmp_path / "o")] + extra, *words)
    assert not (tmp_path / "o").exists()


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU")
def test_cuda_without_a_gpu_is_one_line(capsys, tmp_path):
    """Was a 37-line traceback."""
    one_line_error(capsys, ["segment", str(SAMPLE), "--points", "84,83", "--device", "cuda", "--out",
                            str(tmp_path / "o")], "--device cuda: no CUDA GPU is available here (available: cpu)")


@pytest.mark.parametrize("option, name, words", [
    ("--prompts", "bad.json", ["bad.json: not valid JSON"]),                  # the file was not named
    ("--prompts", "missing.json", ["missing.json: prompts file not found"]),
    ("--prompts", "twice.json", ["twice.json: object 1 is prompted twice on frame 0"]),
    ("--mask", "small.png", ["--mask", "10x10 differs from the video frame size 320x240"]),
    ("--mask", "junk.png", ["--mask", "not a readable image"]),
    ("--mask", "missing.png", ["--mask", "not a readable image"]),
])
def test_bad_input_files_end_in_one_line(capsys, bad_files, option, name, words):
    one_line_error(capsys, ["segment", str(SAMPLE), option, str(bad_files / name), "--out", str(bad_files / "o")],
                   *words)


def test_clicks_and_boxes_on_the_frame_edges_are_kept_as_given():
    """The last pixel is a valid click and a box may end on the frame's edge; nothing is clipped or moved."""
    source = SimpleNamespace(num_frames=48, height=240, width=320)
    args = cli.build_parser().parse_args(["segment", "v.mp4", "--points", "319.5,239;0,0", "--neg-points", "10,10",
                                          "--box", "0,0,320,240"])
    (p,) = cli.prompts_from_args(args, source)
    assert list(p.points) == [(319.5, 239.0), (0.0, 0.0), (10.0, 10.0)] and list(p.point_labels) == [1, 1, 0]
    assert p.box == (0.0, 0.0, 320.0, 240.0)


def test_prompts_outside_the_processed_frames_are_refused_before_the_run(capsys, tmp_path):
    one_line_error(capsys, ["segment", str(SAMPLE), "--prompts", str(ROOT / "assets" / "sample.json"), "--stop",
                            "10", "--out", str(tmp_path / "o")], "object 2 is prompted on frame 17", "--start/--stop")


def test_help_answers_without_importing_torch():
    """`univs --help` took 5-20 s: torch was imported before the arguments were parsed."""
    code = ("import sys; from univs_engine.cli import main; rc = main(['segment', '--help']); "
            "print('torch imported' if 'torch' in sys.modules else 'no torch', rc)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=ROOT).stdout
    assert out.strip().endswith("no torch 0"), out
    for option in ("--alpha", "--overwrite", "--dtype", "fp16", "--device", "cuda:N", "--classes", "--prompts"):
        assert option in out


# ---------------------------------------------------------------------- output locations, checked first
def segment_args(tmp_path, *extra):
    return ["segment", str(SAMPLE), "--points", "84,83", "--out", str(tmp_path / "out"), *extra]


def test_a_symlinked_output_is_never_written_through(capsys, tmp_path):
    """--overwrite with out/legend.json a symlink to a file elsewhere overwrote that file."""
    victim = tmp_path / "victim.txt"
    victim.write_text("keep me")
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "legend.json").symlink_to(victim)
    one_line_error(capsys, segment_args(tmp_path, "--overwrite"), "legend.json is a symbolic link")
    assert victim.read_text() == "keep me" and sorted(os.listdir(tmp_path / "out")) == ["legend.json"]
    with pytest.raises(FileExistsError, match="symbolic link"):  # the writers refuse it too
        W.write_json(tmp_path / "out" / "legend.json", [], overwrite=True)
    assert victim.read_text() == "keep me"


@pytest.mark.parametrize("setup, extra, words", [
    (lambda out: (out.mkdir(), (out / "alpha_1.mov").write_bytes(b"x")), ["--alpha", "mov"],
     ["already holds alpha_1.mov", "--overwrite"]),
    (lambda out: out.write_text("a file"), [], ["exists and is not a folder"]),
    (lambda out: (out.mkdir(), (out / "ids").write_text("a file")), ["--overwrite"],
     ["ids exists but is not a folder"]),
])
def test_outputs_are_checked_before_the_run(capsys, tmp_path, setup, extra, words):
    """These were refused only after the whole run."""
    setup(tmp_path / "out")
    one_line_error(capsys, segment_args(tmp_path, *extra), *words)


def test_an_unwritable_parent_is_refused_before_the_run(capsys, tmp_path):
    (tmp_path / "file").write_text("x")
    one_line_error(capsys, ["segment", str(SAMPLE), "--points", "84,83", "--out", str(tmp_path / "file" / "o")],
                   "cannot be created or written", "is not a writable folder")
    if os.geteuid() != 0:  # root writes anywhere
        (tmp_path / "ro").mkdir(mode=0o500)
        one_line_error(capsys, ["segment", str(SAMPLE), "--points", "84,83", "--out", str(tmp_path / "ro" / "o")],
                       "is not a writable folder")


def test_out_with_dotdot_leaves_no_stray_folder(tmp_path, monkeypatch):
    """--out sub/../../x created sub/."""
    (tmp_path / "w").mkdir()
    monkeypatch.chdir(tmp_path / "w")
    out = cli.output_folder(SimpleNamespace(out="sub/../../x", alpha=None, overwrite=False))
    created = cli.make_output_folder(out)
    assert out == tmp_path / "x" and out.is_dir() and created == out
    assert os.listdir(tmp_path / "w") == []
    cli.remove_if_empty(out, created)  # a run that wrote nothing leaves nothing
    assert not out.exists()


@pytest.mark.parametrize("umask, file_mode, dir_mode", [(0o022, 0o644, 0o755), (0o077, 0o600, 0o700)])
def test_outputs_have_ordinary_permissions(tmp_path, umask, file_mode, dir_mode):
    """Files were created 0600 and folders 0700 whatever the umask."""
    tracks = small_tracks(4, done=range(4))
    old = os.umask(umask)
    try:
        W.save_tracks(tracks, tmp_path / "tracks.npz")
        W.write_json(tmp_path / "legend.json", {"a": 1})
        W.export_id_pngs(tracks, tmp_path / "ids")
    finally:
        os.umask(old)
    mode = lambda p: p.stat().st_mode & 0o777  # noqa: E731
    assert mode(tmp_path / "tracks.npz") == mode(tmp_path / "legend.json") == file_mode
    assert mode(tmp_path / "ids") == dir_mode and mode(tmp_path / "ids" / "00000.png") == file_mode
    assert Tracks.load(tmp_path / "tracks.npz").segmented_frames() == [0, 1, 2, 3]


# ---------------------------------------------------------------------- partial results, interrupts
def small_tracks(num_frames, done, h=24, w=32):
    tracks = Tracks(num_frames, h, w)
    tracks.add_object(1, "a")
    for f in done:
        m = np.zeros((h, w), bool)
        m[4:12, f:f + 8] = True
        tracks.set_mask(f, 1, m)
    return tracks


def outputs_args(tmp_path, task="vos", alpha=None):
    return SimpleNamespace(task=task, overwrite=False, alpha=alpha, out=str(tmp_path / "out"), matte_band=None,
                           matte_smoothness=None)


@pytest.mark.parametrize("task", ["vos", "vis"])
def test_partial_results_hold_only_the_processed_frames(tmp_path, task):
    """Ctrl-C on a 1500-frame clip wrote 3000 PNGs, 2994 of them blank (420 s of writing)."""
    frames = np.zeros((40, 24, 32, 3), np.uint8)
    tracks = small_tracks(40, done=range(3))
    out = tmp_path / "out"
    out.mkdir()
    cli.write_outputs(outputs_args(tmp_path, task, "webm"), out, tracks, VideoSource(frames), "SIGINT")
    assert sorted(os.listdir(out / "ids")) == ["00000.png", "00001.png", "00002.png"]
    pngs = sorted(os.listdir(out / ("masks/1" if task == "vos" else "color")))
    assert pngs == ["00000.png", "00001.png", "00002.png"]
    legend = json.loads((out / "legend.json").read_text())
    assert legend["partial"] is True and legend["stopped_by"] == "SIGINT" and legend["segmented_frames"] == [[0, 2]]
    assert [o["id"] for o in legend["objects"]] == [1]
    assert VideoSource(out / "preview.mp4").num_frames == 3 and VideoSource(out / "alpha_1.webm").num_frames == 3
    assert Tracks.load(out / "tracks.npz").segmented_frames() == [0, 1, 2]
    if task == "vis":
        segs = json.loads((out / "results.json").read_text())[0]["segmentations"]
        assert len(segs) == 40 and all(s is not None for s in segs[:3]) and set(map(str, segs[3:])) == {"None"}
    assert not [n for n in os.listdir(out) if n.startswith(".")]


def test_an_abort_while_writing_leaves_no_partial_file_under_a_final_name(tmp_path, monkeypatch):
    """A second Ctrl-C while writing stops at once; the outputs committed so far are complete, the one being
    written is dropped (its temp folder removed) and legend.json, written last, is absent."""
    calls = []

    def write(self, frame_idx, obj_id, mask):
        calls.append(frame_idx)
        if len(calls) == 3:
            raise cli.Aborted()
        return real(self, frame_idx, obj_id, mask)

    real = W.MaskPngWriter.write
    monkeypatch.setattr(W.MaskPngWriter, "write", write)
    out = tmp_path / "out"
    out.mkdir()
    with pytest.raises(cli.Aborted):
        cli.write_outputs(outputs_args(tmp_path), out, small_tracks(10, range(6)), VideoSource(
            np.zeros((10, 24, 32, 3), np.uint8)), "SIGINT")
    assert sorted(os.listdir(out)) == ["ids", "tracks.npz"]
    assert len(os.listdir(out / "ids")) == 6


def test_signals_stop_the_run_once_and_abort_the_second_time():
    stop = cli.Interrupts()
    with pytest.raises(cli.Aborted):  # before the run (loading): at once
        stop._handle(2, None)
    stop.running = True
    stop._handle(15, None)
    assert stop.name == "SIGTERM"  # the run stops after its current clip
    with pytest.raises(cli.Aborted) as e:
        stop._handle(2, None)
    assert e.value.signum == 2
    stop.running = False
    stop.name = None
    with pytest.raises(cli.Aborted):  # while writing: at once
        stop._handle(15, None)


@pytest.mark.parametrize("order", ["forward", "backward"])
def test_an_unreadable_frame_stops_the_run_and_keeps_the_frames_before_it(order):
    def get_frame(i):
        if i == 5:
            raise ValueError("clip.mp4: frame 5 could not be decoded (truncated or corrupt file?)")
        return np.full((24, 32, 3), i * 20, np.uint8)

    guard = cli.FrameGuard(VideoSource.from_callable(get_frame, 10, 24, 32, name="clip.mp4"))
    seen = guard.source.iter_frames(0, 10) if order == "forward" else guard.source.iter_frames(9, -1, -1)
    got = [int(f[0, 0, 0]) for _, f in seen]
    # the last good frame stands in for the bad one and the rest while the current clip finishes
    assert got == ([0, 20, 40, 60, 80, 80, 80, 80, 80, 80] if order == "forward" else
                   [180, 160, 140, 120, 120, 120, 120, 120, 120, 120])
    assert guard.error == "stopped at frame 5: clip.mp4: frame 5 could not be decoded (truncated or corrupt file?)"
    kept = guard.finished(small_tracks(10, done=range(10))).segmented_frames()
    assert kept == ([0, 1, 2, 3, 4] if order == "forward" else [6, 7, 8, 9])
    guard.close()


def test_errors_after_the_model_loads_start_on_their_own_line(capsys, tmp_path, monkeypatch):
    """They were printed on the progress bar's line."""
    import univs_engine.api as api

    def track(model, video, prompts, options, progress, cancel):
        progress(1, 10)
        raise ValueError("something the model refused")

    monkeypatch.setattr(cli, "load", lambda args: None)
    monkeypatch.setattr(api, "track", track)
    assert main(segment_args(tmp_path)) == 2
    err = capsys.readouterr().err
    assert "\nunivs: error: something the model refused\n" in err and err.count("univs: error") == 1
    assert not (tmp_path / "out").exists()  # the folder made for the run is removed again


# ---------------------------------------------------------------------------------------------- univs eval
def ytvis_files(tmp_path, gt_text: str, results_text: str):
    (tmp_path / "gt.json").write_text(gt_text)
    (tmp_path / "res.json").write_text(results_text)
    return ["eval", "ytvis", "--gt", str(tmp_path / "gt.json"), "--pred", str(tmp_path / "res.json")]


GOOD_GT = {"videos": [{"id": 1, "height": 8, "width": 8, "length": 2}], "categories": [{"id": 1}],
           "annotations": [{"video_id": 1, "category_id": 1, "segmentations": [{"size": [8, 8], "counts": [64]},
                                                                               None]}]}
RESULT = {"video_id": 1, "category_id": 1, "score": 0.5,
          "segmentations": [{"size": [8, 8], "counts": [10, 4, 50]}, None]}


@pytest.mark.parametrize("gt, results, words", [
    ('{"videos": [', "[]", ["ground-truth file", "gt.json", "not valid JSON"]),
    ("[]", "[]", ["gt.json", "must be a JSON object"]),
    ('{"videos": 5}', "[]", ["gt.json", "videos must be a list"]),
    (json.dumps({"videos": [{"id": 1, "height": 8}]}), "[]", ["videos[0]", "'width' is missing"]),
    (json.dumps({"videos": [{"id": 1, "height": 1e9, "width": 1e9, "length": 2}], "annotations": []}), "[]",
     ["videos[0].height", "outside the accepted range"]),                    # would allocate 10^18 pixels
    (json.dumps(GOOD_GT), "{}", ["results file", "res.json", "must be a JSON list"]),
    (json.dumps(GOOD_GT), json.dumps([{**RESULT, "video_id": 7}]), ["res.json: [0]", "video_id 7 is not a video"]),
    (json.dumps(GOOD_GT), json.dumps([{**RESULT, "score": "high"}]), ["res.json: [0].score"]),
    (json.dumps(GOOD_GT), json.dumps([{**RESULT, "segmentations": [None]}]), ["[0].segmentations", "1 frames",
                                                                              "video has 2"]),
    (json.dumps(GOOD_GT), json.dumps([{**RESULT, "segmentations": [{"size": [800, 800], "counts": [640000]}, None]}]),
     ["[0].segmentations[0].size", "differs from the video's frame size [8, 8]"]),
    (json.dumps(GOOD_GT), json.dumps([{**RESULT, "segmentations": [{"size": [8, 8], "counts": [3, 4]}, None]}]),
     ["[0].segmentations[0]", "not a valid RLE"]),
    (json.dumps(GOOD_GT), json.dumps([{**RESULT, "segmentations": "x"}]), ["[0].segmentations", "must be a list"]),
    (json.dumps(GOOD_GT), "[" * 5000 + "]" * 5000, ["res.json", "nest"]),
])
def test_malformed_evaluation_files_end_in_one_line(capsys, tmp_path, gt, results, words):
    """Were KeyError / TypeError / RecursionError tracebacks."""
    one_line_error(capsys, ytvis_files(tmp_path, gt, results), *words)


def test_a_wellformed_evaluation_file_still_scores(capsys, tmp_path):
    assert main(ytvis_files(tmp_path, json.dumps(GOOD_GT), json.dumps([RESULT]))) == 0
    assert "AP" in capsys.readouterr().out


def test_davis_evaluation_errors_name_the_folder(capsys, tmp_path):
    (tmp_path / "gt" / "v1").mkdir(parents=True)
    Image.fromarray(np.ones((8, 8), np.uint8)).save(tmp_path / "gt" / "v1" / "00000.png")
    (tmp_path / "pred" / "v1").mkdir(parents=True)
    (tmp_path / "pred" / "v1" / "00000.png").write_bytes(b"not a png")
    one_line_error(capsys, ["eval", "davis", "--gt", str(tmp_path / "gt"), "--pred", str(tmp_path / "pred")],
                   "00000.png")
