"""The rules a click or a box must meet on a frame, shared by every door: the API, the CLI and the ComfyUI nodes.

Coordinates are pixels of the original frame. A click names a pixel, so it must lie on the frame:
``0 <= x < width`` and ``0 <= y < height``. A box ``(x0, y0, x1, y1)`` has exclusive right and bottom edges:
``x1 > x0``, ``y1 > y0``, ``0 <= x0``, ``0 <= y0``, ``x1 <= width``, ``y1 <= height``. Nothing is clipped: a
value outside the frame is refused with a ``ValueError`` that starts with the caller's ``where`` (the input and
the object it came from) and names the value. NaN and infinities never pass.
"""
from __future__ import annotations

from typing import Any, Iterable

__all__ = ["check_point", "check_points", "check_box"]


def _num(v: Any, where: str, what: str) -> float:
    try:
        return float(v)
    except (TypeError, ValueError):
        raise ValueError(f"{where}: {what} must be a number, got {str(v)[:40]!r}") from None


def check_point(x: Any, y: Any, width: int, height: int, where: str) -> tuple[float, float]:
    """``(x, y)`` as floats when the click lies on the ``width`` x ``height`` frame; else ValueError."""
    fx, fy = _num(x, where, "point x"), _num(y, where, "point y")
    if not (0 <= fx < width and 0 <= fy < height):  # written so that NaN fails
        raise ValueError(f"{where}: point ({fx:g}, {fy:g}) lies outside the {width}x{height} frame "
                         f"(need 0 <= x < {width} and 0 <= y < {height}, in pixels of the input video)")
    return fx, fy


def check_points(points: Iterable[Any], width: int, height: int, where: str) -> list[tuple[float, float]]:
    """Each ``(x, y)`` of ``points`` checked by :func:`check_point`; returns them as float pairs."""
    out = []
    for p in points:
        try:
            x, y = p
        except (TypeError, ValueError):
            raise ValueError(f"{where}: a point must be an (x, y) pair, got {str(p)[:40]}") from None
        out.append(check_point(x, y, width, height, where))
    return out


def check_box(box: Any, width: int, height: int, where: str) -> tuple[float, float, float, float]:
    """``(x0, y0, x1, y1)`` as floats when the box is non-empty and inside the frame; else ValueError."""
    try:
        values = list(box)
    except TypeError:
        raise ValueError(f"{where}: a box must be (x0, y0, x1, y1), got {str(box)[:60]}") from None
    if len(values) != 4:
        raise ValueError(f"{where}: a box must be 4 numbers (x0, y0, x1, y1), got {len(values)}")
    x0, y0, x1, y1 = (_num(v, where, "box coordinate") for v in values)
    shown = f"({x0:g}, {y0:g}, {x1:g}, {y1:g})"
    if not (x1 > x0 and y1 > y0):
        raise ValueError(f"{where}: box {shown} is empty or inverted (need x1 > x0 and y1 > y0)")
    if not (0 <= x0 and 0 <= y0 and x1 <= width and y1 <= height):
        raise ValueError(f"{where}: box {shown} lies outside the {width}x{height} frame "
                         f"(need 0 <= x0, 0 <= y0, x1 <= {width} and y1 <= {height}, in pixels of the input video)")
    return x0, y0, x1, y1
