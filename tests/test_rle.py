"""COCO RLE: hand-worked examples, compressed strings, round trips, area/bbox without decoding."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from univs_engine import rle


# ------------------------------------------------------------------ scalar reference of the COCO string codec
def _ref_to_string(counts: list[int]) -> str:
    """Straight transcription of the COCO algorithm (one value at a time, arithmetic shifts)."""
    out = []
    for i, c in enumerate(counts):
        x = int(c) - (int(counts[i - 2]) if i > 2 else 0)
        more = True
        while more:
            ch = x & 0x1F
            x >>= 5
            more = (x != -1) if (ch & 0x10) else (x != 0)
            if more:
                ch |= 0x20
            out.append(chr(ch + 48))
    return "".join(out)


def _ref_from_string(s: str) -> list[int]:
    counts: list[int] = []
    p = 0
    while p < len(s):
        x, k, more = 0, 0, True
        while more:
            c = ord(s[p]) - 48
            x |= (c & 0x1F) << (5 * k)
            more = bool(c & 0x20)
            p += 1
            k += 1
            if not more and (c & 0x10):
                x |= -1 << (5 * k)
        if len(counts) > 2:
            x += counts[-2]
        counts.append(x)
    return counts


# ------------------------------------------------------------------ hand-worked examples
def test_hand_worked_2x3():
    # column-major scan: (0,0)=0 (1,0)=1 (0,1)=1 (1,1)=0 (0,2)=1 (1,2)=1 -> 0 | 1 1 | 0 | 1 1
    mask = np.array([[0, 1, 1], [1, 0, 1]], dtype=bool)
    counts = rle.rle_encode(mask)
    assert counts.tolist() == [1, 2, 1, 2]
    assert counts.dtype == np.uint32
    # string: "1", "2", "1", then 2 - counts[1] = 0 -> "0"
    assert rle.counts_to_string(counts) == "1210"
    assert rle.encode_coco(mask) == {"size": [2, 3], "counts": "1210"}
    np.testing.assert_array_equal(rle.rle_decode(counts, 2, 3), mask)
    assert rle.rle_area(counts) == 4
    assert rle.rle_bbox(counts, 2, 3) == (0, 0, 2, 1)
    assert rle.rle_bbox_xywh(counts, 2, 3) == [0, 0, 3, 2]


def test_special_masks():
    assert rle.rle_encode(np.zeros((3, 4), bool)).tolist() == [12]
    assert rle.rle_encode(np.ones((3, 4), bool)).tolist() == [0, 12]
    first = np.zeros((2, 2), bool)
    first[0, 0] = True
    assert rle.rle_encode(first).tolist() == [0, 1, 3]
    assert rle.rle_encode(np.zeros((0, 5), bool)).tolist() == [0]
    assert rle.rle_bbox([12], 3, 4) is None
    assert rle.rle_bbox_xywh([12], 3, 4) == [0, 0, 0, 0]
    assert rle.empty_counts(3, 4).tolist() == [12]


def test_hand_worked_strings():
    assert rle.counts_to_string([0, 6]) == "06"
    assert rle.counts_to_string([1, 2, 3, 1]) == "123O"  # 1 - 2 = -1 -> group 31 with sign bit -> 'O'
    assert rle.counts_to_string([100]) == "T3"  # 100 = 4 + 3*32 -> (4|0x20)+48 'T', 3+48 '3'
    assert rle.counts_to_string([16]) == "`0"  # bit 4 set needs a second (zero) group
    for s, c in [("06", [0, 6]), ("123O", [1, 2, 3, 1]), ("T3", [100]), ("`0", [16]), ("1210", [1, 2, 1, 2])]:
        assert rle.string_to_counts(s).tolist() == c


def test_string_codec_matches_reference_algorithm():
    rng = np.random.default_rng(0)
    for n in [1, 2, 3, 4, 5, 17, 300]:
        for scale in [3, 40, 5000, 2**22, 2**30]:
            counts = rng.integers(0, scale, size=n).tolist()
            s = rle.counts_to_string(counts)
            assert s == _ref_to_string(counts)
            assert rle.string_to_counts(s).tolist() == counts
            assert _ref_from_string(s) == counts


def test_string_errors():
    with pytest.raises(ValueError, match="truncated"):
        rle.string_to_counts("T")  # continuation bit on the last char
    with pytest.raises(ValueError, match="invalid character"):
        rle.string_to_counts("1 2")


# ------------------------------------------------------------------ round trips and derived quantities
@pytest.mark.parametrize("shape", [(1, 1), (1, 7), (7, 1), (13, 17), (48, 64), (120, 90)])
@pytest.mark.parametrize("density", [0.0, 0.05, 0.5, 0.97, 1.0])
def test_round_trip_random(shape, density):
    rng = np.random.default_rng(hash((shape, density)) % 2**32)
    mask = rng.random(shape) < density
    counts = rle.rle_encode(mask)
    assert int(counts.sum()) == mask.size
    assert (counts[0] == 0) == bool(mask.T.reshape(-1)[0])  # the first run counts zeros
    np.testing.assert_array_equal(rle.rle_decode(counts, *shape), mask)
    coco = rle.encode_coco(mask)
    np.testing.assert_array_equal(rle.decode_coco(coco), mask)
    assert rle.rle_area(counts) == int(mask.sum())
    np.testing.assert_array_equal(rle.rle_fg_indices(counts), np.flatnonzero(mask.T.reshape(-1)))
    ys, xs = np.nonzero(mask)
    expected = None if ys.size == 0 else (xs.min(), ys.min(), xs.max(), ys.max())
    assert rle.rle_bbox(counts, *shape) == expected


def test_bbox_runs_crossing_columns():
    m = np.zeros((5, 4), bool)
    m[3:, 1] = True
    m[:2, 2] = True  # one run from (3,1) to (1,2): box rows span 0..4 only via the wrap
    counts = rle.rle_encode(m)
    assert len(counts) == 3  # a single foreground run
    assert rle.rle_bbox(counts, 5, 4) == (1, 0, 2, 4)
    m2 = np.zeros((5, 4), bool)
    m2[1:3, 1:3] = True
    assert rle.rle_bbox(rle.rle_encode(m2), 5, 4) == (1, 1, 2, 2)


def test_inputs_and_errors():
    t = torch.zeros(4, 5, dtype=torch.bool)
    t[1, 2] = True
    assert rle.rle_encode(t).tolist() == rle.rle_encode(t.numpy()).tolist()
    assert rle.rle_encode(np.array([[0, 3], [0, 0]], dtype=np.uint8)).tolist() == [2, 1, 1]
    with pytest.raises(ValueError, match="threshold"):
        rle.rle_encode(np.zeros((2, 2), np.float32))
    with pytest.raises(ValueError, match="2-D"):
        rle.rle_encode(np.zeros((2, 2, 2), bool))
    with pytest.raises(ValueError, match="sum to 5"):
        rle.rle_decode([2, 3], 2, 3)
    assert rle.decode_coco({"size": [2, 3], "counts": [1, 2, 1, 2]}).sum() == 4
