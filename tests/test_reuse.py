"""Incremental corrections through the API: a re-run after a later correction recomputes only from there and
equals a run from the start; anything else runs from the start (univs_engine/reuse.py)."""
import numpy as np
import pytest

from univs_engine.api import Cancelled, Prompt, RunOptions, load_model, track
from univs_engine.reuse import RunRecord

T, H, W = 24, 48, 64


@pytest.fixture(scope="module")
def model():
    return load_model("small")


@pytest.fixture(scope="module")
def video():
    rng = np.random.default_rng(0)
    frames = rng.integers(0, 90, (T, H, W, 3), dtype=np.uint8)
    for t in range(T):
        frames[t, 8:24, 4 + t:20 + t] = (230, 40, 40)
        frames[t, 28:44, 40 - t // 2:56 - t // 2] = (40, 40, 230)
    return frames


def square(y, x, size=16):
    m = np.zeros((H, W), bool)
    m[y:y + size, x:x + size] = True
    return m


FIRST = [Prompt(1, 0, mask=square(8, 4)), Prompt(2, 0, mask=square(28, 40))]


def same(a, b):
    return all(np.array_equal(a.mask(f, o), b.mask(f, o)) and np.allclose(a.confidence(f, o), b.confidence(f, o),
                                                                          equal_nan=True)
               for f in range(T) for o in (1, 2))


def run(model, video, prompts, record=None, seen=None, cancel=None):
    return track(model, video, prompts, RunOptions(settings="vos"), reuse=record, cancel=cancel,
                 progress=(lambda d, n: seen.append(d)) if seen is not None else None)


def test_a_later_correction_recomputes_from_there_and_equals_a_full_run(model, video):
    record = RunRecord()
    first = run(model, video, FIRST, record)
    corrected = FIRST + [Prompt(2, 15, mask=square(28, 30, 14))]
    seen = []
    again = run(model, video, corrected, record, seen)
    scratch = run(model, video, corrected)
    assert same(again, scratch)
    assert seen[0] > 10 and seen[-1] == T  # frames before the snapshot were reused, not recomputed
    assert not same(first, scratch)  # the correction mattered
    seen.clear()
    assert same(run(model, video, corrected, record, seen), scratch) and seen == [T]  # nothing changed


def test_other_changes_run_from_the_start(model, video):
    record = RunRecord()
    run(model, video, FIRST, record)
    added = FIRST + [Prompt(3, 12, mask=square(2, 40, 8))]  # a new object: targets interact, so from the start
    seen = []
    got = run(model, video, added, record, seen)
    assert seen[0] == 1 and got.object_ids == [1, 2, 3]
    assert all(np.array_equal(got.mask(f, 3), run(model, video, added).mask(f, 3)) for f in range(T))


def test_a_cancelled_run_leaves_the_record_as_it_was(model, video):
    record = RunRecord()
    first = run(model, video, FIRST, record)
    corrected = FIRST + [Prompt(1, 16, mask=square(8, 19, 14))]
    seen = []
    with pytest.raises(Cancelled):
        run(model, video, corrected, record, seen, cancel=lambda: len(seen) >= 2)
    assert same(record.tracks, first)
    assert same(run(model, video, corrected, record), run(model, video, corrected))
