"""DRF parsers that honour ``DATA_UPLOAD_MAX_MEMORY_SIZE``.

Django checks that limit only when ``request.body`` is read; DRF reads the request as a stream, so
its JSON and form parsers would take a body of any size. These raise ``RequestDataTooBig`` instead,
which the API answers 413 ``payload_too_large`` (:func:`core.errors.payload_too_large`).
File uploads (multipart) keep Django's own limits.
"""

from __future__ import annotations

from django.conf import settings
from django.core.exceptions import RequestDataTooBig
from rest_framework import parsers


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
    def parse(self, stream, media_type=None, parser_context=None):
        return super().parse(_limited(stream, parser_context), media_type, parser_context)


class FormParser(parsers.FormParser):
    def parse(self, stream, media_type=None, parser_context=None):
        return super().parse(_limited(stream, parser_context), media_type, parser_context)
