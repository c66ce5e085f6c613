"""The public API on a randomly initialised small model: input validation (each bad input names
itself), directions, corrections, cancellation and bounded state. Quality is measured with the
trained model elsewhere (tests/test_quality.py)."""
import numpy as np
import pytest
import torch
from PIL import Image

from univs_engine.api import Cancelled, Prompt, RunOptions, UniVSModel, segment, track
from univs_engine.config import get_config
from univs_engine.inference.core import ClipGeometry
from univs_engine.inference.vos import PromptedClipLoop
from univs_engine.presets import TaskSettings
from univs_engine.io.video import VideoSource
from univs_engine.modeling.univs import build_univs

H, W, T = 48, 64, 9


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    torch.set_num_threads(2)
    return UniVSModel(build_univs(get_config("small")))


@pytest.fixture(scope="module")
def video():
    rng = np.random.default_rng(0)
    frames = rng.integers(0, 255, (T, H, W, 3), dtype=np.uint8)
    for t in range(T):  # a bright square moving right
        frames[t, 10:26, 5 + 3 * t:21 + 3 * t] = 250
    return frames


def square(t=0):
    m = np.zeros((H, W), bool)
    m[10:26, 5 + 3 * t:21 + 3 * t] = True
    return m


def test_forward_from_a_middle_frame_covers_only_later_frames(model, video):
    tracks = track(model, video, [Prompt(1, frame=4, mask=square(4))])
    assert tracks.frames_with(1) == list(range(4, T))
    assert np.array_equal(tracks.mask(4, 1), square(4))  # the given mask is kept on its frame


def test_backward_and_both(model, video):
    back = track(model, video, [Prompt(1, frame=4, mask=square(4))], RunOptions(direction="backward"))
    assert back.frames_with(1) == list(range(0, 5))
    both = track(model, video, [Prompt(1, frame=4, mask=square(4))], RunOptions(direction="both"))
    assert both.frames_with(1) == list(range(T))


def test_mixed_prompt_kinds_and_a_correction(model, video):
    prompts = [Prompt(1, 0, mask=square(0)), Prompt(2, 1, points=[(50, 40)], point_labels=[1]),
               Prompt(3, 2, box=(30, 30, 60, 46)), Prompt(1, 6, mask=square(6))]
    tracks = track(model, video, prompts)
    assert tracks.object_ids == [1, 2, 3]
    assert tracks.frames_with(2)[0] == 1 and tracks.frames_with(3)[0] == 2
    assert np.array_equal(tracks.mask(6, 1), square(6))  # the correction wins on its frame


def test_progress_and_cancel_keep_finished_frames(model, video):
    seen = []
    with pytest.raises(Cancelled) as info:
        track(model, video, [Prompt(1, 0, mask=square(0))], progress=lambda d, n: seen.append(d),
              cancel=lambda: len(seen) >= 3)
    assert info.value.tracks.frames_with(1) == [0, 1, 2]


def test_loop_state_does_not_grow_with_length(model):
    settings = TaskSettings(clip_len=3, prompt_tokens=8, memory_frames=2)
    n = 30
    loop = PromptedClipLoop(model.net, settings, ClipGeometry(n, (64, 64), (64, 64), (64, 64)))
    sizes = []
    loop.hooks["state"] = lambda state, call: sizes.append(
        (state.logits.shape[1], state.embds.shape[1], state.memory.tokens.shape[2]))
    frames = torch.randn(n, 3, 64, 64)
    mask = torch.zeros(1, 64, 64)
    mask[0, 8:40, 8:40] = 1
    out = list(loop.run(lambda a, b: frames[a:b], 1, {0: (torch.tensor([0]), mask)}))
    assert [f for f, _, _ in out] == list(range(n))
    assert len(set(sizes[-20:])) == 1  # after warm-up, every clip holds the same amount of state


# ------------------------------------------------------------------ bad inputs name themselves
@pytest.mark.parametrize("prompts, match", [
    ([], "no prompt"),
    ([Prompt(1, 0, points=[(70, 5)])], r"point \(70, 5\) lies outside"),
    ([Prompt(1, 0, box=(10, 10, 80, 20))], "box .* outside"),
    ([Prompt(1, 0, box=(10, 10, 5, 20))], "x1 > x0"),
    ([Prompt(1, 12, mask=square())], "prompt frame 12 is outside"),
    ([Prompt(1, 0, mask=np.ones((10, 10), bool))], "mask of object 1 has size"),
    ([Prompt(1, 0, text="   ")], "text expression is empty"),
    ([Prompt(1, 0, points=[(5, 5)], point_labels=[0])], "selects no pixel"),
])
def test_bad_prompts(model, video, prompts, match):
    with pytest.raises(ValueError, match=match):
        track(model, video, prompts)


def test_text_prompt_without_text_encoder(model, video):
    with pytest.raises(ValueError, match="text-encoder file"):
        track(model, video, [Prompt(1, 0, text="the square")])


def test_bad_videos(tmp_path):
    with pytest.raises(ValueError):
        VideoSource(np.zeros((0, 8, 8, 3), np.uint8))
    nan = np.full((2, 8, 8, 3), np.nan, np.float32)
    with pytest.raises(ValueError, match="NaN|uint8"):
        VideoSource(nan)
    bad = tmp_path / "broken.mp4"
    bad.write_bytes(b"not a video")
    with pytest.raises(ValueError, match="broken.mp4"):
        VideoSource(bad)
    with pytest.raises(FileNotFoundError):
        VideoSource(tmp_path / "missing.mp4")
    folder = tmp_path / "frames"
    folder.mkdir()
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(folder / "0.png")
    Image.fromarray(np.zeros((9, 8, 3), np.uint8)).save(folder / "1.png")
    with pytest.raises(ValueError, match="1.png"):
        VideoSource(folder).frame(1)


def test_empty_vocabulary(model, video):
    with pytest.raises(ValueError, match="vocabulary is empty"):
        segment(model, video, "instance", vocabulary=[" ", ""])


def test_correct_reruns_only_from_the_correction(model, video):
    from univs_engine.api import correct

    tracks = track(model, video, [Prompt(1, 0, mask=square(0))])
    before = [tracks.mask(t, 1).copy() for t in range(5)]
    seen = []
    correct(model, video, tracks, [Prompt(1, 5, mask=square(5)), Prompt(2, 6, box=(30, 30, 60, 46))],
            progress=lambda d, n: seen.append(n))
    assert seen[-1] == T - 5  # only frames 5.. were processed
    assert all(np.array_equal(tracks.mask(t, 1), before[t]) for t in range(5))  # earlier frames kept
    assert np.array_equal(tracks.mask(5, 1), square(5))
    assert tracks.object_ids == [1, 2] and tracks.frames_with(2)[0] == 6


def test_auto_preset_uses_the_referring_settings_for_text_only_prompts():
    from univs_engine.api import auto_preset

    box = (2, 2, 10, 10)
    assert auto_preset([Prompt(1, 0, text="the red circle"), Prompt(2, 3, text="the star")]) == "refvos"
    assert auto_preset([Prompt(1, 0, text="the red circle"), Prompt(2, 0, box=box)]) == "vos"
    assert auto_preset([Prompt(1, 0, box=box)]) == "vos"


def test_frame_feeder_streams_backward_runs_without_seeking(model, monkeypatch):
    """A backward pass reads the file as one reverse stream (random access would seek per frame); frames
    far ahead of the stream (a prompt frame refined first) still come by random access."""
    from pathlib import Path

    from univs_engine.api import FrameFeeder
    from univs_engine.presets import get_settings

    src = VideoSource(Path(__file__).resolve().parents[1] / "assets" / "sample.mp4")
    order = list(range(30, -1, -1))
    expected = {k: src.frame(f) for k, f in enumerate(order)}
    seeks = []
    real = src.frame
    monkeypatch.setattr(src, "frame", lambda i: seeks.append(i) or real(i))
    feeder = FrameFeeder(src, model, get_settings("vos", model.cfg.name), order)
    assert np.array_equal(feeder._frame_at(25), expected[25]) and seeks == [order[25]]
    for k in range(len(order)):
        assert np.array_equal(feeder._frame_at(k), expected[k])
    assert seeks == [order[25]]
    feeder.close()


def test_frames_below_the_minimum_size_are_refused(model):
    from univs_engine.api import MIN_SIDE

    tiny = np.zeros((2, MIN_SIDE - 1, 40, 3), np.uint8)
    with pytest.raises(ValueError, match=f"40x{MIN_SIDE - 1} frames are too small.*at least {MIN_SIDE} pixels"):
        track(model, tiny, [Prompt(1, 0, box=(0, 0, 5, 5))])
    with pytest.raises(ValueError, match="too small"):
        segment(model, tiny, task="semantic")


def test_grayscale_video_is_refused_for_the_built_in_model_but_colour_with_black_frames_is_not(model, video):
    """Measured: on grayscale input the built-in model's masks spread over the frame (colour-only training)."""
    from univs_engine.io.video import VideoSource, is_grayscale

    grey = video.mean(-1, keepdims=True).astype(np.uint8).repeat(3, -1)
    with pytest.raises(ValueError, match="carry no colour"):
        track(model, grey, [Prompt(1, 0, mask=square(0))])
    with pytest.raises(ValueError, match="carry no colour"):
        segment(model, grey, "semantic")
    faded = video.copy()
    faded[:4] = 0  # a fade from black is still a colour video
    assert not is_grayscale(VideoSource(faded)) and is_grayscale(VideoSource(grey))
    track(model, faded, [Prompt(1, 5, mask=square(5))])
