"""ASGI entry point for Daphne: HTTP through Django (``/mcp`` through the MCP SDK), WebSockets through Channels."""

import os

from django.core.asgi import get_asgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings.local")

# Set up Django (apps, models) before importing anything that touches the ORM.
django_asgi_app = get_asgi_application()


def _gateway_asgi_app():
    """Return a Django ASGI handler for ``/v1/`` with only the middleware an API-key gateway uses.

    Each of Django's middleware classes costs an async request two hops to a thread and back
    (``MiddlewareMixin`` runs ``process_request``/``process_response`` through ``sync_to_async``):
    measured, ~7.5 of ~27 ms of Daphne CPU per ``/v1`` chat completion. ``/v1`` authenticates by API
    key and answers JSON: sessions, CSRF, messages, clickjacking and WhiteNoise have nothing to do
    there. ``GATEWAY_MIDDLEWARE`` is the chain it keeps; the rest of the site keeps ``MIDDLEWARE``.
    """
    from django.conf import settings
    from django.core.handlers.asgi import ASGIHandler

    middleware = settings.MIDDLEWARE
    # Read by the handler's constructor only, once, here at start-up, before any request is served.
    settings.MIDDLEWARE = settings.GATEWAY_MIDDLEWARE
    try:
        return ASGIHandler()
    finally:
        settings.MIDDLEWARE = middleware


gateway_asgi_app = _gateway_asgi_app()

from chat.mcp_server import mcp_asgi_app  # noqa: E402

MCP_PATHS = ("/mcp", "/mcp/")


async def http_app(scope, receive, send):
    """Route ``/v1/`` to the gateway's lean handler, ``/mcp`` to the MCP server and everything else to Django."""
    path = scope["path"]
    if path.startswith("/v1/"):
        app = gateway_asgi_app
    elif path in MCP_PATHS:
        app = mcp_asgi_app  # an ASGI app of the MCP SDK's, behind its own key check: not a Django view
    else:
        app = django_asgi_app
    await app(scope, receive, send)


import threading  # noqa: E402

from channels.auth import AuthMiddlewareStack  # noqa: E402
from channels.routing import ProtocolTypeRouter, URLRouter  # noqa: E402
from channels.security.websocket import AllowedHostsOriginValidator  # noqa: E402
from django.conf import settings  # noqa: E402

from accounts.middleware import AuditASGIMiddleware  # noqa: E402
from chat.routing import websocket_urlpatterns  # noqa: E402
from config.daphne import leave_request_bodies_to_django  # noqa: E402
from core.log import RequestIdASGIMiddleware  # noqa: E402
from core.websocket import DatabaseUnavailableASGIMiddleware  # noqa: E402
from inference.embeddings import embedding_preload  # noqa: E402
from inference.services import model_preload  # noqa: E402

leave_request_bodies_to_django()

if settings.EMBEDDING_PRELOAD:
    # Retrieval and memory embed every question once a user has documents or memories: load the
    # model while the server starts, not inside someone's first turn.
    threading.Thread(target=embedding_preload, name="embedding-preload", daemon=True).start()

if settings.MODEL_PRELOAD and settings.INFERENCE_EXECUTION == "inline":
    # The default local model loads and answers one token while the server starts, so the first
    # user's first token is a warm model's (~2.9 s sooner on the bundled model). With turns on Celery
    # workers (INFERENCE_EXECUTION=celery) the web process runs no model: nothing to load here.
    threading.Thread(target=model_preload, name="model-preload", daemon=True).start()

application = ProtocolTypeRouter(
    {
        "http": http_app,
        # A request id per connection (and per message, set by the consumer) on every log record.
        "websocket": RequestIdASGIMiddleware(
            # Audit events from a socket: its user (known once AuthMiddlewareStack has run), source "ws".
            # PostgreSQL down while the session and user are read: a 4503 close, not an HTTP 500.
            AllowedHostsOriginValidator(
                DatabaseUnavailableASGIMiddleware(
                    AuthMiddlewareStack(AuditASGIMiddleware(URLRouter(websocket_urlpatterns)))
                )
            )
        ),
    }
)
