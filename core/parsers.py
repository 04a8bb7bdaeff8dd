"""DRF parsers that honour ``DATA_UPLOAD_MAX_MEMORY_SIZE`` and refuse JSON that Parley cannot handle.

Django checks that limit only when ``request.body`` is read; DRF reads the request as a stream, so
its JSON and form parsers would take a body of any size. These raise ``RequestDataTooBig`` instead,
which the API answers 413 ``payload_too_large`` (:func:`core.errors.payload_too_large`).
File uploads (multipart) keep Django's own limits.

JSON (:func:`json_loads`, also used by the WebSocket consumers) is refused, as 400 ``parse_error``,
when it is nested deeper than ``REQUEST_JSON_MAX_DEPTH`` (Python's decoder recurses once per level
and fails with ``RecursionError``, a 500, at about 1,000) or when a string holds a NUL character
(PostgreSQL text cannot store it) or a lone UTF-16 surrogate (not a character: encoders, tokenizers
and providers fail on it). Both only come from ``\\u`` escapes: the UTF-8 decoder and the JSON
decoder's strict mode refuse them raw.
"""

from __future__ import annotations

import json
import re
from typing import Any

from django.conf import settings
from django.core.exceptions import RequestDataTooBig
from rest_framework import parsers
from rest_framework.exceptions import ParseError
from rest_framework.utils.json import strict_constant

# A JSON string (possessive: never backtracks; an unterminated one runs to the end), or anything
# that is not a bracket. Removing both leaves the brackets.
_NOT_BRACKETS = re.compile(r'"(?:[^"\\]++|\\.)*+(?:"|\Z)|[^"\[\]{}]++', re.DOTALL)
_BRACKET_KINDS = str.maketrans("{}", "[]")
# Escapes that decode to NUL or to a surrogate; paired surrogates decode to one character, so a
# surrogate left in a decoded string is a lone one.
_SUSPECT_ESCAPE = re.compile(r"\\u(?:0000|[dD][89a-fA-F])")
_UNSAFE_CHARACTER = re.compile(r"[\x00\ud800-\udfff]")


class UnsafeJSON(ValueError):
    """JSON that is not well-formed, nested too deeply, or holds a NUL or a lone surrogate (message says which)."""


def _too_deep(text: str, max_depth: int) -> bool:
    """Return whether the JSON ``text`` nests arrays and objects more than ``max_depth`` deep.

    Linear-time C string work, no Python loop per character: keep the brackets outside strings,
    then remove adjacent ``[]`` pairs once per level (each pass removes the innermost level).
    """
    brackets = _NOT_BRACKETS.sub("", text).translate(_BRACKET_KINDS)
    for _ in range(max_depth):
        inner = brackets.replace("[]", "")
        if inner == brackets:
            break
        brackets = inner
    # Balanced and still nested, or opened far deeper than allowed without closing (malformed,
    # but the decoder would recurse through the opening brackets before noticing).
    return "[]" in brackets or brackets.count("[") > max_depth


def _unsafe_string(data: Any) -> str | None:
    """Return why a string (key or value) in ``data`` is refused, or None. ``data`` is decoded JSON."""
    stack = [data]
    while stack:
        item = stack.pop()
        if isinstance(item, dict):
            stack.extend(item.keys())
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
        elif isinstance(item, str) and (found := _UNSAFE_CHARACTER.search(item)):
            if found.group() == "\x00":
                return "JSON strings may not contain NUL characters (\\u0000)."
            return f"JSON strings may not contain a lone surrogate (\\u{ord(found.group()):04x})."
    return None


def json_loads(text: str | bytes, *, max_depth: int | None = None) -> Any:
    """Decode the JSON document ``text`` (bytes: UTF-8) and return it.

    Raise :class:`UnsafeJSON` (a ``ValueError``) with a message for the client when it is not
    JSON, nests arrays/objects deeper than ``max_depth`` levels (default
    ``REQUEST_JSON_MAX_DEPTH``), or a string in it holds NUL or a lone surrogate. ``NaN`` and
    ``Infinity`` are refused too, as DRF's own parser does. Time linear in ``len(text)``.
    """
    max_depth = settings.REQUEST_JSON_MAX_DEPTH if max_depth is None else max_depth
    try:
        if isinstance(text, bytes):
            text = text.decode("utf-8")
        if _too_deep(text, max_depth):
            raise UnsafeJSON(f"JSON nested more than {max_depth} levels deep.")
        data = json.loads(text, parse_constant=strict_constant)
    except UnsafeJSON:
        raise
    except (ValueError, RecursionError) as exc:  # UnicodeDecodeError and JSONDecodeError are ValueErrors
        raise UnsafeJSON(str(exc)) from exc
    if _SUSPECT_ESCAPE.search(text) and (reason := _unsafe_string(data)):
        raise UnsafeJSON(reason)
    return data


class _LimitedStream:
    """Read at most ``limit`` bytes of ``stream``; raise ``RequestDataTooBig`` on the byte after."""

    def __init__(self, stream, limit: int):
        self.stream = stream
        self.left = limit

    def read(self, size: int = -1) -> bytes:
        want = self.left + 1 if size is None or size < 0 else min(size, self.left + 1)
        data = self.stream.read(want)
        self.left -= len(data)
        if self.left < 0:
            raise RequestDataTooBig("Request body exceeded settings.DATA_UPLOAD_MAX_MEMORY_SIZE.")
        return data


def _limited(stream, parser_context):
    limit = settings.DATA_UPLOAD_MAX_MEMORY_SIZE
    if limit is None or stream is None:
        return stream
    request = (parser_context or {}).get("request")
    if request is not None:
        try:
            declared = int(request.META.get("CONTENT_LENGTH") or 0)
        except ValueError:
            declared = 0
        if declared > limit:  # refuse before reading anything
            raise RequestDataTooBig("Request body exceeded settings.DATA_UPLOAD_MAX_MEMORY_SIZE.")
    return _LimitedStream(stream, limit)  # a body without a (true) Content-Length is cut off too


class JSONParser(parsers.JSONParser):
    """DRF's JSON parser with the size limit and the checks of :func:`json_loads`: 400 ``parse_error``."""

    def parse(self, stream, media_type=None, parser_context=None):
        stream = _limited(stream, parser_context)
        encoding = parsers.get_encoding(parser_context or {})
        body = stream.read() if stream is not None else b""
        try:
            text = body.decode(encoding)
            return json_loads(text)
        except (UnsafeJSON, UnicodeDecodeError) as exc:
            raise ParseError(f"JSON parse error - {exc}") from exc


class FormParser(parsers.FormParser):
    def parse(self, stream, media_type=None, parser_context=None):
        return super().parse(_limited(stream, parser_context), media_type, parser_context)
