"""Intent rules: decide the obvious intents of a user message without a model call.

:func:`intent_rules` runs on Daphne's event loop for every turn, on messages of up to
``CHAT_MAX_MESSAGE_CHARS`` (32,000) characters, so every pattern here must take time linear in the
length of the message. Python's ``re`` does not release the GIL, so moving a slow pattern to a thread
would not help: the patterns themselves must be linear. How they are kept linear:

- :data:`_ARITHMETIC` uses possessive quantifiers (``*+``, ``++``: Python 3.11), so one attempt never
  backtracks, and may not start where an attempt that started one character earlier would have read
  the same characters the same way (inside a run of ``(``/whitespace, or inside a run of digits). Each
  character is then read by a bounded number of attempts. The backtracking pattern it replaces took
  18 s for a message of 12,000 digits (issue 20, item 1).
- the ``sqrt(...)`` form is found with one search and one ``str.find`` instead of ``[^)]*\\)``, which
  rescans the rest of the message at every ``sqrt(`` when no ``)`` follows.

``tests/agents/test_intent.py`` checks that these find exactly what the old backtracking pattern
found, and ``bench/attacks.py`` measures them on 32,000-character attacks.
"""

from __future__ import annotations

import re

_NUMBER = r"\d++(?:[.,]\d++)?+"
_OPERATOR = r"(?:\*\*|[-+*/%^x×÷])"
_OPERAND = rf"[(\s]*+-?+\s*+{_NUMBER}\s*+\)*+"
# An arithmetic expression: "(3 + 4) * -2", "12.5 x 4", "2 ** 10". Giving back any character that a
# possessive quantifier took could never let the rest match (no later part can read a digit, "(" or
# "-" there), so the matches are those of the plain greedy pattern.
_ARITHMETIC = re.compile(rf"(?<![(\s])(?!(?<=\d)\d){_OPERAND}(?:\s*+{_OPERATOR}\s*+{_OPERAND})++")
_FUNCTION_CALL = re.compile(r"(?:sqrt|log|exp|abs)\s*+\(")
_MATH_CUE = re.compile(r"\b(what(?:'s| is)|calculate|compute|evaluate|how much is|solve|equals?)\b|=", re.IGNORECASE)
_MATH_WORDS = set(
    "what what's is calculate compute evaluate how much solve equals equal please the result of answer "
    "me tell give can you".split()
)
_DATETIME = re.compile(
    r"\b(what(?:'s| is) the (?:current )?(?:time|date|day)|what time is it|current (?:time|date)|today'?s date|"
    r"what day is (?:it|today)|what year is it)\b",
    re.IGNORECASE,
)
_KNOWLEDGE = re.compile(
    r"\b(my (?:documents?|files?|notes|uploads?|pdfs?)|according to|in the (?:document|file|pdf|docs?)|"
    r"knowledge base)\b",
    re.IGNORECASE,
)
_CONVERSATIONS = re.compile(
    r"\b(we (?:talked|discussed|spoke|chatted)|earlier conversation|last time|previous(?:ly)? (?:conversation|chat)|"
    r"other conversation)\b",
    re.IGNORECASE,
)
_STOP_WORDS = set(
    "a an and are about did do does earlier for from how i in is it last me my of on our previous previously "
    "said say the this time to was we what when where which who why with you talked discussed spoke chatted "
    "conversation conversations chat".split()
)


def expression_span(text: str) -> tuple[int, int] | None:
    """Return ``(start, end)`` of the first arithmetic expression or ``sqrt|log|exp|abs(...)`` in ``text``.

    The first one is the one that starts first; a function call runs to the first ``)`` after its
    ``(``. None when there is neither. Linear time in ``len(text)``.
    """
    arithmetic = _ARITHMETIC.search(text)
    call = _FUNCTION_CALL.search(text)
    if call is not None:
        # If no ")" follows the first call, none follows any later one: one find decides for all.
        close = text.find(")", call.end())
        call = (call.start(), close + 1) if close != -1 else None
    if arithmetic is not None and (call is None or arithmetic.start() < call[0]):
        return arithmetic.span()
    return call


def intent_rules(text: str) -> dict | None:
    """Return ``{"intent", "tool"?, "arguments"?}`` for messages whose intent is obvious, else None.

    Arithmetic ("What is 12.5 * 4?") → the calculator with the expression; date or time questions →
    the datetime tool; "we talked about X" → conversation search; "in my documents" → knowledge.
    Linear time in ``len(text)``: safe on the event loop for any message.
    """
    if _DATETIME.search(text):
        return {"intent": "datetime", "tool": "datetime", "arguments": {}}
    span = expression_span(text)
    if span is not None:
        start, end = span
        expression = text[start:end].strip()
        rest = re.findall(r"[\w']+", (text[:start] + text[end:]).lower())
        # The expression must be what the message is about: "what is 3-4?" but not "what is the
        # best way to spend 3-4 days in Rome?".
        if len([w for w in rest if w not in _MATH_WORDS]) <= 2 and (_MATH_CUE.search(text) or not rest):
            return {"intent": "calculate", "tool": "calculator", "arguments": {"expression": expression}}
    if _CONVERSATIONS.search(text):
        words = [w for w in re.findall(r"[\w'-]+", text.lower()) if w not in _STOP_WORDS]
        if words:
            return {
                "intent": "conversation_search",
                "tool": "conversation_search",
                "arguments": {"query": " or ".join(words)},
            }
    if _KNOWLEDGE.search(text):
        return {"intent": "knowledge"}
    return None
