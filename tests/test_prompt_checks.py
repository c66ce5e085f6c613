"""univs_engine/prompt_checks.py: the one rule for clicks and boxes, and that the engine's prompt_to_mask, the
CLI options and the nodes draw the line at the same place."""
from __future__ import annotations

import math
from types import SimpleNamespace

import pytest

from univs_engine import cli
from univs_engine.api import Prompt, prompt_to_mask
from univs_engine.prompt_checks import check_box, check_point, check_points

W, H = 12, 10
POINTS_OK = [(0, 0), (11, 9), (11.99, 9.99), (5.5, 0)]
POINTS_BAD = [(12, 0), (0, 10), (-0.01, 3), (3, -1), (math.nan, 1), (1, math.inf), (12, 10)]
BOXES_OK = [(0, 0, 12, 10), (1, 1, 2, 2), (0.5, 0.5, 11.5, 9.5)]
BOXES_BAD = [(0, 0, 12.5, 10), (0, 0, 12, 11), (-1, 0, 5, 5), (0, -0.5, 5, 5), (5, 5, 5, 8), (5, 5, 8, 4),
             (0, 0, math.inf, 5), (math.nan, 0, 5, 5)]


@pytest.mark.parametrize("x, y", POINTS_OK)
def test_points_on_the_frame_pass_as_floats(x, y):
    assert check_point(x, y, W, H, "here") == (float(x), float(y))


@pytest.mark.parametrize("x, y", POINTS_BAD)
def test_points_off_the_frame_are_refused(x, y):
    with pytest.raises(ValueError, match=r"^here: point \(.*\) lies outside the 12x10 frame \(need 0 <= x < 12"):
        check_point(x, y, W, H, "here")


@pytest.mark.parametrize("box", BOXES_OK)
def test_boxes_inside_the_frame_pass_as_floats(box):
    assert check_box(box, W, H, "here") == tuple(float(v) for v in box)


@pytest.mark.parametrize("box", BOXES_BAD)
def test_boxes_empty_or_past_the_frame_are_refused(box):
    with pytest.raises(ValueError, match=r"^here: box \(.*\) (lies outside the 12x10 frame|is empty or inverted)"):
        check_box(box, W, H, "here")


def test_malformed_values_are_value_errors():
    with pytest.raises(ValueError, match="here: a box must be 4 numbers"):
        check_box((1, 2, 3), W, H, "here")
    with pytest.raises(ValueError, match="here: box coordinate must be a number"):
        check_box((1, 2, "x", 4), W, H, "here")
    with pytest.raises(ValueError, match="here: a point must be an"):
        check_points([(1, 2, 3)], W, H, "here")
    assert check_points([(1, 2), [3, 4]], W, H, "here") == [(1.0, 2.0), (3.0, 4.0)]


@pytest.mark.parametrize("point, ok", [(p, True) for p in POINTS_OK] + [(p, False) for p in POINTS_BAD])
def test_engine_and_check_agree_on_points(point, ok):
    """api.prompt_to_mask refuses exactly the clicks check_point refuses."""
    p = Prompt(1, 0, points=[point], box=(0, 0, 2, 2))
    if ok:
        assert prompt_to_mask(p, H, W).any()
    else:
        with pytest.raises(ValueError, match="outside"):
            prompt_to_mask(p, H, W)


@pytest.mark.parametrize("box, ok", [(b, True) for b in BOXES_OK] + [(b, False) for b in BOXES_BAD])
def test_engine_and_check_agree_on_boxes(box, ok):
    p = Prompt(1, 0, box=box)
    if ok:
        assert prompt_to_mask(p, H, W).any()
    else:
        with pytest.raises(ValueError):
            prompt_to_mask(p, H, W)


@pytest.mark.parametrize("point, ok", [(p, True) for p in POINTS_OK] + [(p, False) for p in POINTS_BAD[:4]])
def test_cli_options_draw_the_same_line(point, ok):
    source = SimpleNamespace(num_frames=4, height=H, width=W)
    args = cli.build_parser().parse_args(["segment", "v.mp4", "--points", "1,1"])
    args.points = [point]
    if ok:
        (p,) = cli.prompts_from_args(args, source)
        assert list(p.points) == [tuple(map(float, point))]
    else:
        with pytest.raises(ValueError, match=r"^--points: point .* lies outside the 12x10 frame"):
            cli.prompts_from_args(args, source)
