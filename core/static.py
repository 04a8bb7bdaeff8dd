"""Static files: WhiteNoise, able to sit in an async middleware stack, and ``/favicon.ico``.

``whitenoise.middleware.WhiteNoiseMiddleware`` is sync-only, and one sync-only middleware makes
Django run every request under Daphne through a thread and back (an ``async_to_sync`` bridge per
request). This one answers static files as WhiteNoise does (in a thread: file I/O) and passes every
other request on without leaving the event loop.
"""

from __future__ import annotations

from asgiref.sync import iscoroutinefunction, markcoroutinefunction, sync_to_async
from django.http import HttpRequest, HttpResponseRedirect
from django.templatetags.static import static
from whitenoise.middleware import WhiteNoiseMiddleware


class AsyncWhiteNoiseMiddleware(WhiteNoiseMiddleware):
    """WhiteNoise's middleware (same settings), sync and async capable."""

    sync_capable = True
    async_capable = True

    def __init__(self, get_response):
        super().__init__(get_response)
        self.is_async = iscoroutinefunction(get_response)
        if self.is_async:
            markcoroutinefunction(self)

    def __call__(self, request):
        if self.is_async:
            return self.__acall__(request)
        return super().__call__(request)

    async def __acall__(self, request):
        static_file = self.find_file(request.path_info) if self.autorefresh else self.files.get(request.path_info)
        if static_file is not None:
            return await sync_to_async(self.serve)(static_file, request)
        return await self.get_response(request)


def favicon(request: HttpRequest) -> HttpResponseRedirect:
    """``GET /favicon.ico``: a redirect (302) to Parley's SVG icon among the static files.

    Browsers ask for /favicon.ico on pages that link no icon (the admin, the API docs). Temporary,
    not permanent: in production the static file's name carries a hash of its content, which a
    new release may change.
    """
    return HttpResponseRedirect(static("favicon.svg"))
