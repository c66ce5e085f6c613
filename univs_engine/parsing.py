"""Bounded parsers of user input shared by the command line, the prompts file and the ComfyUI nodes.

Every function raises ``ValueError`` whose message starts with ``what`` (the input's name) on any malformed
value, and never anything else: JSON is refused beyond :data:`MAX_DEPTH` levels of nesting (before the decoder
recurses), numbers must be finite and within the given range (a 400-digit integer is out of range, not an
``OverflowError``), and integer ranges (``a-b``) are refused when they would expand past a limit.
"""
from __future__ import annotations

import json
import math
import re
from numbers import Real
from typing import Any

__all__ = ["MAX_DEPTH", "MAX_JSON_CHARS", "LIMIT", "parse_json", "number", "integer", "int_range"]

MAX_DEPTH = 16                # nesting levels of JSON input (the deepest format used here needs 6)
MAX_JSON_CHARS = 64 << 20     # characters of one JSON text
LIMIT = 1e9                   # default bound of numbers (pixel coordinates, frame indices, ids)
_MAX_NUMBER_CHARS = 64        # characters of one number written as text

_STRING = re.compile(r'"[^"\\]*(?:\\.[^"\\]*)*"', re.S)
_BRACKET = re.compile(r"[\[\]{}]")
_INT_TEXT = re.compile(r"[+-]?[0-9]+")


class _BadNumber(ValueError):
    pass


def _json_int(text: str) -> int:
    if len(text) > _MAX_NUMBER_CHARS:
        raise _BadNumber(f"the number {text[:20]}... has more than {_MAX_NUMBER_CHARS} digits")
    return int(text)


def _json_float(text: str) -> float:
    value = float(text) if len(text) <= _MAX_NUMBER_CHARS else math.inf
    if not math.isfinite(value):
        raise _BadNumber(f"the number {text[:20]} is out of range")
    return value


def _json_constant(name: str) -> Any:
    raise _BadNumber(f"{name} is not a number JSON allows")


def _too_deep(text: str, max_depth: int) -> bool:
    """Whether [ and { nest deeper than ``max_depth`` outside strings (a linear scan; the decoder would recurse)."""
    depth = 0
    for m in _BRACKET.finditer(_STRING.sub('""', text)):
        depth += 1 if m.group() in "[{" else -1
        if depth > max_depth:
            return True
    return False


def parse_json(text: Any, what: str, max_depth: int = MAX_DEPTH, max_chars: int = MAX_JSON_CHARS) -> Any:
    """JSON text -> Python value, bounded in size, nesting depth and numbers (no NaN/Infinity)."""
    if isinstance(text, (bytes, bytearray)):
        try:
            text = bytes(text).decode("utf-8-sig")  # a byte-order mark, as some editors write, is dropped
        except UnicodeDecodeError:
            raise ValueError(f"{what}: not UTF-8 text") from None
    if not isinstance(text, str):
        raise ValueError(f"{what}: expected JSON text, got {type(text).__name__}")
    if len(text) > max_chars:
        raise ValueError(f"{what}: {len(text)} characters of JSON, more than the {max_chars} accepted")
    if _too_deep(text, max_depth):
        raise ValueError(f"{what}: JSON nested more than {max_depth} levels deep")
    try:
        return json.loads(text, parse_int=_json_int, parse_float=_json_float, parse_constant=_json_constant)
    except json.JSONDecodeError as e:
        raise ValueError(f"{what}: not valid JSON ({e.msg} at line {e.lineno} column {e.colno})") from None
    except _BadNumber as e:
        raise ValueError(f"{what}: {e}") from None
    except RecursionError:  # not reached after the depth check; kept so no other type can escape
        raise ValueError(f"{what}: JSON nested too deeply") from None


def _as_real(value: Any, what: str) -> float | int:
    """int, float, numpy/torch scalar or numeric text -> int or float (no bools, no other types)."""
    if isinstance(value, bool) or (type(value).__module__ == "numpy" and "bool" in type(value).__name__):
        raise ValueError(f"{what}: must be a number, got {value!r}")
    if isinstance(value, int):
        return value
    if isinstance(value, str):
        text = value.strip()
        if len(text) > _MAX_NUMBER_CHARS:
            raise ValueError(f"{what}: must be a number, got {value[:20]!r}... ({len(value)} characters)")
        if _INT_TEXT.fullmatch(text):
            return int(text)
        value = text
    elif not isinstance(value, Real) and not hasattr(value, "__float__"):
        raise ValueError(f"{what}: must be a number, got {type(value).__name__}")
    try:
        return float(value)
    except (TypeError, ValueError, OverflowError, RuntimeError):
        raise ValueError(f"{what}: must be a number, got {str(value)[:40]!r}") from None


def number(value: Any, what: str, lo: float = -LIMIT, hi: float = LIMIT) -> float:
    """A finite number in ``[lo, hi]`` (ints, floats, numpy/torch scalars or numeric text)."""
    v = _as_real(value, what)
    if isinstance(v, float) and not math.isfinite(v):
        raise ValueError(f"{what}: must be a finite number, got {value!r}")
    if not lo <= v <= hi:
        shown = f"a {v.bit_length()}-bit number" if isinstance(v, int) and v.bit_length() > 64 else f"{v:g}"
        raise ValueError(f"{what}: {shown} is outside the accepted range {lo:g}..{hi:g}")
    return float(v)


def integer(value: Any, what: str, lo: int = 0, hi: int = int(LIMIT)) -> int:
    """A whole number in ``[lo, hi]`` (``3`` and ``3.0`` are accepted, ``3.5`` is not)."""
    v = number(value, what, lo, hi)
    if v != int(v):
        raise ValueError(f"{what}: must be a whole number, got {value!r}")
    return int(v)


def int_range(a: int, b: int, what: str, limit: int) -> range:
    """``a..b`` inclusive, refused when it runs backwards or would hold more than ``limit`` values."""
    if b < a:
        raise ValueError(f"{what}: the range {a}-{b} runs backwards")
    if b - a + 1 > limit:
        raise ValueError(f"{what}: the range {a}-{b} holds {b - a + 1} values, more than the {limit} accepted")
    return range(a, b + 1)
