"""Measure what one hostile chat message costs the intent rules and the calculator (issue 20, items 1, 2).

Run with ``python bench/attacks.py`` (no services needed). Options: ``--chars 32000 --runs 5``.

1. Intent rules (``agents.intent.intent_rules``), which run on Daphne's event loop for every turn,
   on messages of ``--chars`` characters (Parley's maximum, ``CHAT_MAX_MESSAGE_CHARS``, is 32,000)
   built to make a backtracking pattern rescan the text: digits, open parentheses, ``sqrt(`` with no
   ``)``, and others. Each is also timed at half the length: linear time gives a ratio near 2,
   quadratic near 4. Target: every message under 50 ms at the maximum.
2. The calculator (``agents.tools.calculate``) on expressions with huge integer results. Each must
   end, with a result or a ``ToolError``, in well under ``MAX_SECONDS``. Target: under 5 ms.

Times are the fastest of ``--runs`` runs, in milliseconds: the machine may be busy with other work.
The last line is a JSON summary.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

BASE_DIR = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(BASE_DIR))

TARGET_INTENT_MS = 50.0
TARGET_CALCULATOR_MS = 5.0


def messages(chars: int) -> dict[str, str]:
    """Return hostile messages of about ``chars`` characters, by name."""
    return {
        "digits": "1" * chars,
        "open parentheses": "(" * chars,
        "sqrt( without )": "sqrt(" * (chars // 5),
        "1. repeated": "1." * (chars // 2),
        "1 ) repeated": "1 )" * (chars // 3),
        "- and spaces": "- " * (chars // 2),
        "1+( repeated": "1+(" * (chars // 3),
        "digits and spaces": "1 " * (chars // 2),
        "what is 1+1+...": "what is " + "1+" * (chars // 2 - 5) + "1",
    }


EXPRESSIONS = [
    "((10**1000)**1000)**10",
    "((10**1000)**1000)**1000",
    "10**1000**1000",
    "9**9**9**9",
    "99**9999 * 99**9999",
    "(10**1000)*(10**1000)",
    "2**3999 * 2**3999 * 2**3999",
    "round(7, -10**9)",
    "-" * 150 + "1",
    "2**3999 // 3**1000 + 2**3999 % 7**500",
]


def fastest(function, argument, runs: int) -> float:
    """Return the fastest of ``runs`` calls of ``function(argument)``, in milliseconds."""
    best = float("inf")
    for _ in range(runs):
        started = time.perf_counter()
        try:
            function(argument)
        except Exception as exc:  # the calculator refuses with ToolError: that is the point
            if type(exc).__name__ != "ToolError":
                raise
        best = min(best, time.perf_counter() - started)
    return best * 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--chars", type=int, default=32_000)
    parser.add_argument("--runs", type=int, default=5)
    options = parser.parse_args()

    from agents.intent import intent_rules
    from agents.tools import calculate

    summary = {"intent_ms": {}, "calculator_ms": {}}
    print(f"Intent rules, {options.chars:,} characters (ms, and the ratio to half the length):")
    half = messages(options.chars // 2)
    for name, text in messages(options.chars).items():
        full_ms = fastest(intent_rules, text, options.runs)
        half_ms = fastest(intent_rules, half[name], options.runs)
        summary["intent_ms"][name] = round(full_ms, 2)
        print(f"  {name:20} {full_ms:8.2f} ms   x{full_ms / max(half_ms, 1e-6):.1f}")
    print("Calculator (ms):")
    for expression in EXPRESSIONS:
        ms = fastest(calculate, expression, options.runs)
        summary["calculator_ms"][expression[:40]] = round(ms, 3)
        print(f"  {expression[:40]:40} {ms:8.3f} ms")
    summary["intent_max_ms"] = max(summary["intent_ms"].values())
    summary["calculator_max_ms"] = max(summary["calculator_ms"].values())
    summary["targets_met"] = (
        summary["intent_max_ms"] <= TARGET_INTENT_MS and summary["calculator_max_ms"] <= TARGET_CALCULATOR_MS
    )
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
