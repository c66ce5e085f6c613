"""Every parser of user input fails closed: 2,000 random, mutated, structured and pathological cases per parser
(fixed seed; tools/fuzz_parsers.py, which runs 20,000 per parser) may only raise the parser's own error type
(ValueError; argparse.ArgumentTypeError for the command line's option types), and each case must finish within
1 s, measured per case with time.perf_counter."""
import importlib.util
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("fuzz_parsers", ROOT / "tools" / "fuzz_parsers.py")
fuzz = importlib.util.module_from_spec(_spec)
sys.modules["fuzz_parsers"] = fuzz
_spec.loader.exec_module(fuzz)

CASES = 2_000
BOUND_S = 1.0


@pytest.mark.parametrize("name", list(fuzz.parsers()))
def test_parser_fails_closed(name):
    result = fuzz.fuzz(name, cases=CASES, seed=0, bound_s=BOUND_S)
    assert result["cases"] == CASES
    assert not result["failures"], f"{name}: {len(result['failures'])} failures\n" + "\n".join(result["failures"][:10])
    assert result["accepted"] > 0  # the cases are not all refused: seeds survive some mutations
