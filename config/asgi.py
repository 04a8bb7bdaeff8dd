"""ASGI entry point for Daphne: HTTP through Django, WebSockets through Channels."""

import os

from django.core.asgi import get_asgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings.local")

# Set up Django (apps, models) before importing anything that touches the ORM.
django_asgi_app = get_asgi_application()

import threading  # noqa: E402

from channels.auth import AuthMiddlewareStack  # noqa: E402
from channels.routing import ProtocolTypeRouter, URLRouter  # noqa: E402
from channels.security.websocket import AllowedHostsOriginValidator  # noqa: E402
from django.conf import settings  # noqa: E402

from chat.routing import websocket_urlpatterns  # noqa: E402
from config.daphne import leave_request_bodies_to_django  # noqa: E402
from core.log import RequestIdASGIMiddleware  # noqa: E402
from inference.embeddings import embedding_preload  # noqa: E402

leave_request_bodies_to_django()

if settings.EMBEDDING_PRELOAD:
    # Retrieval and memory embed every question once a user has documents or memories: load the
    # model while the server starts, not inside someone's first turn.
    threading.Thread(target=embedding_preload, name="embedding-preload", daemon=True).start()

application = ProtocolTypeRouter(
    {
        "http": django_asgi_app,
        # A request id per connection (and per message, set by the consumer) on every log record.
        "websocket": RequestIdASGIMiddleware(
            AllowedHostsOriginValidator(AuthMiddlewareStack(URLRouter(websocket_urlpatterns)))
        ),
    }
)
