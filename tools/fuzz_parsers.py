"""Fuzz every parser of user input with random, mutated, structured and pathological text.

A parser passes when, for every case, it either returns or raises its own error type (``ValueError``; the
command line's option types raise ``argparse.ArgumentTypeError``, which argparse turns into a one-line error),
and each case finishes within ``--bound`` seconds (measured with ``time.perf_counter``).

    python tools/fuzz_parsers.py                      # 20,000 cases per parser, seed 0
    python tools/fuzz_parsers.py --cases 2000 --only node_select cli_points

``tests/test_fuzz_parsers.py`` runs the same cases, 2,000 per parser.
"""
from __future__ import annotations

import argparse
import gc
import importlib
import importlib.util
import json
import random
import sys
import time
from pathlib import Path
from typing import Any, Callable

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

CASES = 20_000
BOUND_S = 1.0
SEED = 0
MAX_TEXT = 200_000  # characters of one generated case

TOKENS = ["[", "]", "{", "}", '"', ":", ",", ";", "-", "!", "*", "#", "\n", " ", "\t", "0", "1", "-1", "3.5", "1e999",
          "-1e999", "1e308", "NaN", "Infinity", "null", "true", "false", '"x"', '""', "9" * 400, "1" * 5000, "[" * 40,
          "{" * 40, "\\", "\\u0000", "\u00b2", "\u0663", "\u00e9", "\U0001f602", "1-999999999", "99999999999-1",
          "all", "person", "cuda", "cuda:0", "cpu", "x", "label:", "&amp;", "\x00", "\ufeff"]
KEYS = ["objects", "id", "label", "category", "expression", "prompt", "frame", "frames", "points", "negative_points",
        "box", "mask_rle", "size", "counts", "x", "y", "width", "height", "x0", "y0", "x1", "y1", "version", "0",
        "0.0", "1"]
PATHOLOGICAL = [
    lambda: "[" * 100_000 + "]" * 100_000,
    lambda: "{\"a\":" * 5_000 + "1" + "}" * 5_000,
    lambda: "[" + "9" * 400 + "]",
    lambda: '{"objects": [{"id": 1, "prompt": {"frame": 0, "mask_rle": {"size": [100000, 100000], "counts": [1]}}}]}',
    lambda: '{"objects": [{"id": 1e999, "prompt": {"frame": 1e999}}]}',
    lambda: "1-999999999",
    lambda: "0-99999999999999, 5",
    lambda: ",".join(["1"] * 50_000),
    lambda: "a" * 90_000,
    lambda: "person, " * 10_000,
    lambda: '"' + "\\" * 50_000 + '"',
    lambda: '{"objects": "x"}',
    lambda: "[" + ",".join(["[1, 2]"] * 10_000) + "]",
]


# ---------------------------------------------------------------------- the parsers and their seeds
def _prompts_file(text: str) -> Any:
    from univs_engine.prompts_file import parse_prompts

    return parse_prompts(text, "prompts.json", len(text) % 2 == 0, 48, 240, 320)


def _select_tracks():
    from univs_engine.results import Tracks

    tracks = Tracks(2, 4, 4)
    for oid, label in ((1, "person"), (2, "car"), (7, "person")):
        tracks.add_object(oid, label)
    return tracks


def _pack(module: str) -> Any:
    """A module of the node pack, imported as package ``univs_pack`` (as ComfyUI and the tests load it)."""
    if "univs_pack" not in sys.modules:
        spec = importlib.util.spec_from_file_location("univs_pack", ROOT / "__init__.py",
                                                      submodule_search_locations=[str(ROOT)])
        pack = importlib.util.module_from_spec(spec)
        sys.modules["univs_pack"] = pack
        spec.loader.exec_module(pack)
    return importlib.import_module(f"univs_pack.nodes.{module}")


def parsers() -> dict[str, tuple[Callable[[str], Any], type, list[str]]]:
    """name -> (parse(text), the error type it may raise, seed inputs)."""
    from univs_engine import cli
    from univs_engine.parsing import parse_json

    C, P, S = _pack("convert"), _pack("prompts"), _pack("select")
    tracks = _select_tracks()
    sample = (ROOT / "assets" / "sample.json").read_text()
    editor = json.dumps({"version": 1, "objects": [{"id": 1, "label": "a", "frames": {
        "0": {"points": [[3, 4, 1], [5, 5, 0]], "box": None}, "4": {"points": [], "box": [1, 1, 6, 6]}}}]})
    boxes = ['{"x": 10, "y": 20, "width": 30, "height": 40}', "[[1, 2, 3, 4], [5, 6, 7, 8]]",
             '[[{"x": 1, "y": 1, "width": 4, "height": 4}], [{"x0": 0, "y0": 0, "x1": 5, "y1": 5}]]']
    A = argparse.ArgumentTypeError
    return {
        "json": (lambda t: parse_json(t, "json"), ValueError, [sample, editor, *boxes]),
        "prompts_file": (_prompts_file, ValueError, [sample]),
        "cli_points": (cli._points, A, ["10,20;30,40", "1.5, 2"]),
        "cli_box": (cli._box, A, ["1,2,3,4", "0.5,0.5,10,10"]),
        "cli_classes": (cli._classes, A, ["person,dog,car", " a , b "]),
        "cli_text": (cli._expression, A, ["dancer: the woman in red", "the car"]),
        "cli_count": (cli._count, A, ["12", "0"]),
        "cli_device": (cli._device, A, ["cuda:0", "cpu"]),
        "node_points": (lambda t: C.parse_points(t), ValueError, ['[{"x": 10, "y": 20}, {"x": 1.5, "y": 2}]',
                                                                  "[[1, 2], [3, 4]]", "[5, 6]"]),
        "node_boxes": (lambda t: C.parse_boxes(t, frame=len(t) % 3 or None), ValueError, boxes),
        "node_editor_state": (P.parse_editor_state, ValueError, [editor]),
        "node_vocabulary": (lambda t: C.parse_vocabulary("custom", t), ValueError, ["person, dog\n# note\ncar;Dog"]),
        "node_expressions": (C.parse_expressions, ValueError, ["dancer: the woman in red\n\n# skip\nthe car"]),
        "node_int_list": (lambda t: C.parse_int_list(t, "frames"), ValueError, ["1, 3 5-7", "0-3,9"]),
        "node_select": (lambda t: S.select_objects(tracks, t), ValueError, ["1, person, !2", "all, !car", "1-7"]),
    }


# ---------------------------------------------------------------------- case generators
def _random_text(rng: random.Random) -> str:
    n = rng.choice([0, 1, 2, 3, 5, 8, 20, 60, 200, 1000])
    parts = []
    for _ in range(n):
        r = rng.random()
        if r < 0.45:
            parts.append(rng.choice(TOKENS[:30]))
        elif r < 0.9:
            parts.append(rng.choice("0123456789,;-: .[]{}\"!xyz\n"))
        else:
            parts.append(chr(rng.randrange(0x20, 0x3000)))
    return "".join(parts)


def _mutate(rng: random.Random, text: str) -> str:
    for _ in range(rng.randint(1, 8)):
        i = rng.randrange(len(text) + 1)
        j = min(len(text), i + rng.randint(0, 40))
        op = rng.randrange(6)
        if op == 0:
            text = text[:i] + rng.choice(TOKENS) + text[i:]
        elif op == 1:
            text = text[:i] + text[j:]
        elif op == 2:
            text = text[:i] + rng.choice(TOKENS) + text[j:]
        elif op == 3:
            text = text[:j] + text[i:j] * rng.randint(1, 50) + text[j:]
        elif op == 4:
            text = text[:i]
        else:
            text = text[:i] + chr(rng.randrange(0x20, 0x250)) + text[i + 1:]
    return text[:MAX_TEXT]


def _random_value(rng: random.Random, depth: int = 0) -> Any:
    r = rng.random()
    if depth < 5 and r < 0.25:
        return {rng.choice(KEYS): _random_value(rng, depth + 1) for _ in range(rng.randint(0, 5))}
    if depth < 5 and r < 0.5:
        return [_random_value(rng, depth + 1) for _ in range(rng.randint(0, 5))]
    return rng.choice([None, True, False, 0, 1, -1, 2, 4, 3.5, -0.0, 1e300, 10**30, 10**400, "", "x", "0", "1",
                       "1e999", "person", "a: b", [1, 2], [1, 2, 3, 4], [5, 5, 1, 1], {"size": [240, 320],
                       "counts": [76800]}, {"size": [100000, 100000], "counts": [1]}])


def _structured(rng: random.Random) -> str:
    value = _random_value(rng)
    if rng.random() < 0.5:
        value = {"objects": [value, _random_value(rng)]}
    try:
        return json.dumps(value)
    except ValueError:  # 10**400 beyond the digit limit of int -> str
        return "[]"


def make_case(rng: random.Random, seeds: list[str]) -> str:
    r = rng.random()
    if r < 0.3:
        return _random_text(rng)
    if r < 0.7:
        return _mutate(rng, rng.choice(seeds))
    if r < 0.97:
        return _structured(rng)
    return rng.choice(PATHOLOGICAL)()


# ---------------------------------------------------------------------- running
def fuzz(name: str, cases: int = CASES, seed: int = SEED, bound_s: float = BOUND_S) -> dict:
    """Run ``cases`` cases through one parser; returns counts, the slowest case and the failures."""
    parse, allowed, seeds = parsers()[name]
    rng = random.Random(f"{seed}:{name}")
    failures: list[str] = []
    slowest, accepted = 0.0, 0
    gc.freeze()  # collections then scan what a case allocates, not the whole (test) process
    try:
        for k in range(cases):
            text = make_case(rng, seeds)
            outcome, dt = run_case(parse, allowed, text)
            accepted += outcome == "accepted"
            slowest = max(slowest, dt)
            if outcome not in ("accepted", "refused"):
                failures.append(f"case {k}: {outcome} <- {text[:120]!r}")
            if dt > bound_s:
                failures.append(f"case {k}: took {dt:.2f} s (bound {bound_s} s) <- {text[:120]!r}")
    finally:
        gc.unfreeze()
    return {"parser": name, "cases": cases, "accepted": accepted, "slowest_s": slowest, "failures": failures}


def run_case(parse: Callable[[str], Any], allowed: type, text: str) -> tuple[str, float]:
    """-> ("accepted" | "refused" | "<other error>: <message>", seconds), timed with time.perf_counter."""
    t0 = time.perf_counter()
    try:
        parse(text)
        outcome = "accepted"
    except allowed:
        outcome = "refused"
    except Exception as e:  # noqa: BLE001 - anything else is a finding (RecursionError, MemoryError, ...)
        outcome = f"{type(e).__name__}: {str(e)[:120]}"
    return outcome, time.perf_counter() - t0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--cases", type=int, default=CASES)
    ap.add_argument("--seed", type=int, default=SEED)
    ap.add_argument("--bound", type=float, default=BOUND_S, help="seconds one case may take")
    ap.add_argument("--only", nargs="*", help="parser names (default: all)")
    args = ap.parse_args(argv)
    bad = 0
    for name in args.only or list(parsers()):
        t0 = time.perf_counter()
        r = fuzz(name, args.cases, args.seed, args.bound)
        print(f"{name:18} {r['cases']} cases, {r['accepted']} accepted, slowest {r['slowest_s'] * 1000:.1f} ms, "
              f"{time.perf_counter() - t0:.1f} s, {len(r['failures'])} failures")
        for f in r["failures"][:10]:
            print("   ", f)
        bad += bool(r["failures"])
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
