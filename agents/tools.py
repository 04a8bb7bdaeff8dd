"""The allow-listed tools a turn may call, and the two ways a model asks for them.

Each tool is a :class:`Tool`: a name, a description, a JSON-schema of its arguments (the shape
OpenAI function calling uses) and a function ``run(arguments, context) -> str``. Only tools in
:data:`REGISTRY` can run; a model naming another one gets an error result, never a call. Apps
above agents add theirs with :func:`tool_register` (chat's ``conversation_search``).

Tool-call formats:

- remote (OpenAI-compatible) models: OpenAI function calling, ``tools=[{"type": "function",
  "function": {...}}]``; see :func:`openai_tools` and :func:`parse_openai_tool_calls`.
- small local models: a JSON object on one line, ``{"tool": "<name>", "arguments": {...}}`` or
  ``{"tool": null}``; see :func:`json_tool_prompt` and :func:`parse_json_tool_call`.

Results are cached in the ``tool`` layer (key: tool, arguments and, for per-user tools, the user),
except those that depend on the moment (``datetime``).
"""

from __future__ import annotations

import ast
import json
import math
import operator
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from inference.cache import canonical_key
from inference.cache import layer as cache_layer

from .selectors import chunk_search


class ToolError(ValueError):
    """A tool could not run with these arguments; the message is shown to the model as the result."""


@dataclass
class ToolContext:
    """Who is asking: tools that read data only ever read this user's."""

    user_id: int
    conversation_id: str | None = None


@dataclass
class Tool:
    name: str
    description: str
    parameters: dict
    run: Callable[[dict, ToolContext], str]
    cacheable: bool = True
    per_user: bool = False  # the result depends on the user's data: the user is part of the cache key


@dataclass
class ToolResult:
    tool: str
    arguments: dict
    result: str
    ok: bool = True
    cached: bool = False
    extra: dict = field(default_factory=dict)

    def as_dict(self) -> dict:
        return {
            "tool": self.tool,
            "arguments": self.arguments,
            "result": self.result,
            "ok": self.ok,
            "cached": self.cached,
        }


# Calculator: a safe evaluator over Python's AST. Never eval(): only numbers, + - * / // % ** and
# parentheses, a few math functions and constants.
#
# Bounded before anything is computed (issue 20, item 2): Python's integers have no size limit and
# one big multiplication or power is a single C call that holds the GIL, so it cannot be interrupted
# and stalls every socket of the Daphne process. Each operation's result size is estimated from its
# operands first and refused beyond MAX_RESULT_BITS; with operands and results that small every
# single operation takes microseconds, which is what makes the deadline checked between them a hard
# bound on the whole evaluation.

_BINARY = {
    ast.Add: operator.add,
    ast.Sub: operator.sub,
    ast.Mult: operator.mul,
    ast.Div: operator.truediv,
    ast.FloorDiv: operator.floordiv,
    ast.Mod: operator.mod,
    ast.Pow: operator.pow,
}
_UNARY = {ast.UAdd: operator.pos, ast.USub: operator.neg}
_FUNCTIONS = {
    "sqrt": math.sqrt,
    "abs": abs,
    "round": round,
    "log": math.log,
    "log10": math.log10,
    "exp": math.exp,
    "sin": math.sin,
    "cos": math.cos,
    "tan": math.tan,
    "floor": math.floor,
    "ceil": math.ceil,
}
_CONSTANTS = {"pi": math.pi, "e": math.e}
MAX_EXPRESSION_CHARS = 200
# 4,000 bits is about 1,200 decimal digits: far more than anyone reads in an answer, yet 10**1000
# (3,322 bits) and 2**3999 still fit, and the decimal string stays under Python's 4,300-digit limit
# of int-to-str conversion. Multiplying two such numbers takes about 10 µs; printing one, 20 µs.
MAX_RESULT_BITS = 4_000
# Nodes from the root to a leaf: "(1 + 2) * 3" is 3 deep. "1+1+...+1" in 200 characters is 100 deep, and so
# is any flat sum or product that fits: the limit is for deliberately nested input ("- - - -...").
MAX_DEPTH = 100
MAX_SECONDS = 0.25  # wall-clock budget of one evaluation; bounded operations stay well under it
# round(x, -n) of an integer computes 10**n: beyond 1,000 digits that is past MAX_RESULT_BITS.
_MAX_ROUND_DIGITS = 1_000


def _bits(value: int | float) -> int:
    """Return the size of ``value`` in bits as far as cost goes: floats are fixed size (64)."""
    return abs(value).bit_length() if isinstance(value, int) else 64


def _too_large() -> ToolError:
    return ToolError(f"The result would be too large (over {MAX_RESULT_BITS:,} bits, about 1,200 digits).")


def _check_operation(op: ast.operator, left: int | float, right: int | float) -> None:
    """Raise :class:`ToolError` when ``left <op> right`` would have an integer result over MAX_RESULT_BITS.

    Only integer results can grow: float arithmetic is fixed size (it overflows to ``inf`` or
    raises ``OverflowError``), and an integer too large for a float makes mixed arithmetic raise
    ``OverflowError`` at once. Estimates are upper bounds of the result's bit length.
    """
    if not (isinstance(left, int) and isinstance(right, int)):
        return
    if isinstance(op, ast.Add | ast.Sub):
        estimate = max(_bits(left), _bits(right)) + 1
    elif isinstance(op, ast.Mult):
        estimate = _bits(left) + _bits(right)
    elif isinstance(op, ast.Pow):
        if right < 0 or abs(left) <= 1:
            return  # a float (computed in floating point), or 0, 1 or ±1
        if right.bit_length() > 32:
            raise _too_large()  # |left| >= 2: at least 2**(2**32) bits
        estimate = math.floor(right * math.log2(abs(left))) + 1
    else:
        return  # /, //, %: no larger than the left operand
    if estimate > MAX_RESULT_BITS:
        raise _too_large()


def _check_call(name: str, args: list) -> None:
    """Raise :class:`ToolError` for calls whose cost grows with an argument: ``round(x, ndigits)``."""
    if name == "round" and len(args) == 2:
        if not isinstance(args[1], int):
            raise ToolError("round() takes a whole number of digits.")
        if abs(args[1]) > _MAX_ROUND_DIGITS:
            raise ToolError(f"round() takes at most {_MAX_ROUND_DIGITS:,} digits.")


def _checked(value):
    """Return ``value``; raise :class:`ToolError` when it is not a real number (``(-8) ** 0.5``) or too large.

    Sizes are estimated before computing (:func:`_check_operation`); this catches what estimates do
    not cover, such as ``floor()`` of a float (at most 1,024 bits: cheap to have computed).
    """
    if isinstance(value, complex):
        raise ToolError("The result is not a real number.")
    if isinstance(value, int) and value.bit_length() > MAX_RESULT_BITS:
        raise _too_large()
    return value


def calculate(expression: str) -> int | float:
    """Evaluate an arithmetic expression safely (AST walk, no ``eval``) and return its value.

    Accepts numbers, ``+ - * / // % **``, parentheses, ``x``/``×``/``÷`` for ``* /``, and
    :data:`_FUNCTIONS` / :data:`_CONSTANTS`. Raise :class:`ToolError` for anything else, division by
    zero, an expression over :data:`MAX_EXPRESSION_CHARS` characters or nested deeper than
    :data:`MAX_DEPTH`, an integer result (final or intermediate) over :data:`MAX_RESULT_BITS` bits, a
    result that is not a real number, or an evaluation over :data:`MAX_SECONDS`. Never raises
    anything else, and returns within about MAX_SECONDS.
    """
    # A first cut before the regular expressions below read it (a tool call from a model can be of
    # any length); "^" → "**" can lengthen the text, so the real limit is checked after them.
    if len(expression) > 2 * MAX_EXPRESSION_CHARS:
        raise ToolError("The expression is empty or too long.")
    text = expression.strip().replace("×", "*").replace("÷", "/").replace("^", "**")
    text = re.sub(r"(?<=\d)\s*[xX]\s*(?=[\d(])", "*", text)
    text = re.sub(r"(?<=\d),(?=\d{3}(?!\d))", "", text)  # thousands separators: 1,000 is 1000
    if not text or len(text) > MAX_EXPRESSION_CHARS:
        raise ToolError("The expression is empty or too long.")
    try:
        tree = ast.parse(text, mode="eval")
    except (SyntaxError, ValueError, MemoryError, RecursionError) as exc:  # ValueError: a NUL character
        raise ToolError(f"Not an arithmetic expression: {expression!r}.") from exc
    deadline = time.monotonic() + MAX_SECONDS

    def walk(node: ast.AST, depth: int) -> int | float:
        if depth > MAX_DEPTH:
            raise ToolError(f"The expression is nested too deeply (over {MAX_DEPTH} levels).")
        if time.monotonic() > deadline:
            raise ToolError("The calculation took too long.")
        if isinstance(node, ast.Constant) and isinstance(node.value, int | float) and not isinstance(node.value, bool):
            return node.value
        if isinstance(node, ast.BinOp) and type(node.op) in _BINARY:
            left, right = walk(node.left, depth + 1), walk(node.right, depth + 1)
            _check_operation(node.op, left, right)
            return _checked(_BINARY[type(node.op)](left, right))
        if isinstance(node, ast.UnaryOp) and type(node.op) in _UNARY:
            return _UNARY[type(node.op)](walk(node.operand, depth + 1))
        if isinstance(node, ast.Name) and node.id in _CONSTANTS:
            return _CONSTANTS[node.id]
        if (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Name)
            and node.func.id in _FUNCTIONS
            and not node.keywords
            and len(node.args) <= 2
        ):
            args = [walk(arg, depth + 1) for arg in node.args]
            _check_call(node.func.id, args)
            return _checked(_FUNCTIONS[node.func.id](*args))
        raise ToolError(f"Not allowed in a calculation: {ast.unparse(node)}.")

    try:
        value = walk(tree.body, 1)
    except ToolError:
        raise
    except ZeroDivisionError as exc:
        raise ToolError("Division by zero.") from exc
    except OverflowError as exc:  # float arithmetic, or an integer too large for a float
        raise ToolError(f"The result is out of range: {exc}.") from exc
    except (ArithmeticError, ValueError, TypeError) as exc:  # TypeError: sqrt() or sqrt(1, 2)
        raise ToolError(f"The calculation failed: {exc}.") from exc
    if isinstance(value, float) and value.is_integer() and abs(value) < 1e15:
        return int(value)
    return value


def format_number(value: int | float) -> str:
    """Return ``value`` as a short string: integers as they are, floats with up to 12 significant digits."""
    return str(value) if isinstance(value, int) else f"{value:.12g}"


def _run_calculator(arguments: dict, context: ToolContext) -> str:
    expression = str(arguments.get("expression", ""))
    return f"{expression.strip()} = {format_number(calculate(expression))}"


def _run_datetime(arguments: dict, context: ToolContext) -> str:
    name = str(arguments.get("timezone") or "UTC")
    try:
        zone = ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError) as exc:
        raise ToolError(f"Unknown time zone {name!r}.") from exc
    now = datetime.now(UTC).astimezone(zone)
    iso = now.isoformat(timespec="seconds")
    return f"The current date and time is {now:%A %d %B %Y, %H:%M} ({name}); ISO 8601: {iso}."


KB_SEARCH_TOP_K = 3  # passages kb_search returns unless asked for another number
KB_SEARCH_MAX_TOP_K = 20


def _run_kb_search(arguments: dict, context: ToolContext) -> str:
    query = str(arguments.get("query", "")).strip()
    if not query:
        raise ToolError("Give a query.")
    top_k = arguments.get("top_k")
    if top_k is None:  # left out, or a model's explicit null
        top_k = KB_SEARCH_TOP_K
    elif isinstance(top_k, bool) or not isinstance(top_k, int) or not 1 <= top_k <= KB_SEARCH_MAX_TOP_K:
        raise ToolError(f"top_k must be a whole number from 1 to {KB_SEARCH_MAX_TOP_K}.")
    hits = chunk_search(user_id=context.user_id, query=query, top_k=top_k)
    if not hits:
        return "No passage of the user's documents matches."
    return "\n\n".join(f"[{h.title} #{h.index}, similarity {h.similarity:.2f}]\n{h.content}" for h in hits)


REGISTRY: dict[str, Tool] = {
    tool.name: tool
    for tool in [
        Tool(
            name="calculator",
            description="Evaluate an arithmetic expression exactly, e.g. '12.5 * 4' or 'sqrt(2) / 3'.",
            parameters={
                "type": "object",
                "properties": {"expression": {"type": "string", "description": "The arithmetic expression."}},
                "required": ["expression"],
            },
            run=_run_calculator,
        ),
        Tool(
            name="datetime",
            description="Get the current date and time, optionally in an IANA time zone such as 'Europe/Paris'.",
            parameters={
                "type": "object",
                "properties": {"timezone": {"type": "string", "description": "IANA time zone; default UTC."}},
            },
            run=_run_datetime,
            cacheable=False,  # the answer changes every minute
        ),
        Tool(
            name="kb_search",
            description="Search the user's uploaded documents for passages about a topic.",
            parameters={
                "type": "object",
                "properties": {
                    "query": {"type": "string", "description": "What to look for."},
                    "top_k": {
                        "type": "integer",
                        "minimum": 1,
                        "maximum": KB_SEARCH_MAX_TOP_K,
                        "description": f"How many passages to return; default {KB_SEARCH_TOP_K}.",
                    },
                },
                "required": ["query"],
            },
            run=_run_kb_search,
            per_user=True,
            cacheable=False,  # documents change (uploads, deletions): a cached search could show a deleted one
        ),
    ]
}


def tool_register(tool: Tool) -> None:
    """Add ``tool`` to :data:`REGISTRY` (replacing one of the same name), for the apps above agents.

    Call from an ``AppConfig.ready()``: chat registers ``conversation_search`` there, since agents
    does not read chat's conversations.
    """
    REGISTRY[tool.name] = tool


def tool_run(*, name: str, arguments: dict, context: ToolContext) -> ToolResult:
    """Run the allow-listed tool ``name`` with ``arguments``; return its result (never raises for bad input).

    An unknown tool or invalid arguments give a result with ``ok=False`` and the reason as text, so
    the model can be told. Cacheable tools' results are kept in the ``tool`` cache layer
    (``CACHE_TOOL_TTL``). Blocking (database, cache): call from a worker thread.
    """
    tool = REGISTRY.get(name)
    if tool is None:
        return ToolResult(tool=name, arguments=arguments, result=f"Unknown tool {name!r}.", ok=False)
    if not isinstance(arguments, dict):
        return ToolResult(tool=name, arguments={}, result="The arguments must be a JSON object.", ok=False)
    cache = cache_layer("tool")
    key = None
    if tool.cacheable:
        key = canonical_key({"tool": name, "arguments": arguments, "user": context.user_id if tool.per_user else None})
        cached = cache.get(key)
        if cached is not None:
            return ToolResult(tool=name, arguments=arguments, result=cached["result"], ok=cached["ok"], cached=True)
    try:
        result, ok = tool.run(arguments, context), True
    except ToolError as exc:
        result, ok = str(exc), False
    if key is not None:
        cache.set(key, {"result": result, "ok": ok})
    return ToolResult(tool=name, arguments=arguments, result=result, ok=ok)


def openai_tools() -> list[dict]:
    """Return the registry in OpenAI's function-calling shape (``tools=`` of a chat completion)."""
    return [
        {"type": "function", "function": {"name": t.name, "description": t.description, "parameters": t.parameters}}
        for t in REGISTRY.values()
    ]


def parse_openai_tool_calls(tool_calls) -> list[tuple[str, dict]]:
    """Return ``[(name, arguments)]`` from an OpenAI message's ``tool_calls`` (objects or dicts).

    Arguments that are not a JSON object become ``{}`` (the tool then reports what is missing).
    """
    calls = []
    for call in tool_calls or []:
        function = call["function"] if isinstance(call, dict) else call.function
        name = function["name"] if isinstance(function, dict) else function.name
        raw = function["arguments"] if isinstance(function, dict) else function.arguments
        try:
            arguments = json.loads(raw or "{}")
        except ValueError:
            arguments = {}
        calls.append((name, arguments if isinstance(arguments, dict) else {}))
    return calls


def json_tool_prompt(extra: list[dict] | None = None) -> str:
    """Return the system prompt that asks a small local model for one JSON tool call (or none).

    ``extra``: more tools offered for this turn only (a user's MCP tools), each in OpenAI's function
    shape ``{"name", "description", "parameters"}``.
    """
    functions = [{"name": t.name, "description": t.description, "parameters": t.parameters} for t in REGISTRY.values()]
    lines = [
        f"- {f['name']}: {f['description']} Arguments: {json.dumps((f.get('parameters') or {}).get('properties', {}))}"
        for f in [*functions, *(extra or [])]
    ]
    return (
        "Decide whether a tool is needed to answer the user's message. Tools:\n"
        + "\n".join(lines)
        + '\nAnswer with one line of JSON only: {"tool": "<name>", "arguments": {...}} '
        'or {"tool": null} when no tool is needed.'
    )


_JSON_OBJECT = re.compile(r"\{.*\}", re.DOTALL)


def parse_json_tool_call(text: str) -> tuple[str, dict] | None:
    """Return ``(name, arguments)`` from a model's JSON tool call, or None for ``{"tool": null}`` or junk.

    Tolerates text around the object (small models add some).
    """
    match = _JSON_OBJECT.search(text or "")
    if not match:
        return None
    try:
        data = json.loads(match.group(0))
    except ValueError:
        return None
    if not isinstance(data, dict) or not isinstance(data.get("tool"), str):
        return None
    arguments = data.get("arguments")
    return data["tool"], arguments if isinstance(arguments, dict) else {}
