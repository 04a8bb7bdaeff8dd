"""Intent rules: linear-time patterns that decide exactly what the old backtracking ones decided."""

import random
import re

from agents.intent import expression_span, intent_rules

# The pattern the rules used until issue 20 (item 1): right answers, quadratic time. Kept here as the
# specification the linear one must agree with.
_OLD_NUMBER = r"\d+(?:[.,]\d+)?"
_OLD_OPERATOR = r"(?:\*\*|[-+*/%^x×÷])"
OLD_EXPRESSION = re.compile(
    rf"[(\s]*-?\s*{_OLD_NUMBER}\s*\)*(?:\s*{_OLD_OPERATOR}\s*[(\s]*-?\s*{_OLD_NUMBER}\s*\)*)+"
    r"|(?:sqrt|log|exp|abs)\s*\([^)]*\)"
)

PIECES = [*"0123456789 (-)+.,x*/%^×÷\t\n", "**", "sqrt", "log(", "abs (", "a", "is", "é", "what is "]


def test_the_linear_pattern_finds_the_same_expression_as_the_old_one():
    rng = random.Random(20)  # noqa: S311 - a fixed seed, for a reproducible sample of texts
    for _ in range(100_000):
        text = "".join(rng.choice(PIECES) for _ in range(rng.randint(0, 24)))
        old = OLD_EXPRESSION.search(text)
        assert expression_span(text) == (old.span() if old else None), repr(text)


def test_a_message_at_the_length_limit_made_to_backtrack_is_not_arithmetic():
    # Each of these took the old pattern from 40 s to 90 s at 32,000 characters.
    for attack in ["1" * 32_000, "(" * 32_000, "sqrt(" * 6_400, "1." * 16_000, "1 )" * 10_666]:
        assert intent_rules(attack) is None
    assert intent_rules("what is " + "1+" * 15_000 + "1")["intent"] == "calculate"
