"""Staff-only chat REST API under /api/v1/admin/: who is connected and active."""

from datetime import timedelta

from django.utils import timezone
from drf_spectacular.utils import OpenApiExample, extend_schema
from rest_framework import serializers
from rest_framework.permissions import IsAdminUser
from rest_framework.response import Response
from rest_framework.views import APIView

from core.presence import ws_connection_count

from .selectors import active_user_count, session_count

ACTIVE_WINDOW = timedelta(hours=24)


class SessionCountApi(APIView):
    """``GET`` (staff): ``{"websocket_connections", "authenticated_sessions", "active_users_24h"}``.

    ``websocket_connections``: chat WebSockets open now on every process (core.presence; 0 when
    Redis is down). ``authenticated_sessions``: unexpired browser sessions (logins). ``active_users_24h``:
    users who sent a chat message or made a model request (chat or /v1) in the last 24 hours.
    """

    permission_classes = [IsAdminUser]

    class OutputSerializer(serializers.Serializer):
        websocket_connections = serializers.IntegerField(help_text="Chat WebSockets open now, all processes.")
        authenticated_sessions = serializers.IntegerField(help_text="Unexpired login sessions.")
        active_users_24h = serializers.IntegerField(help_text="Users with a message or model request in 24 h.")

    @extend_schema(
        summary="Connected and active users (staff)",
        responses=OutputSerializer,
        examples=[
            OpenApiExample(
                "counts", value={"websocket_connections": 3, "authenticated_sessions": 12, "active_users_24h": 7}
            )
        ],
    )
    def get(self, request):
        data = {
            "websocket_connections": ws_connection_count(),
            "authenticated_sessions": session_count(),
            "active_users_24h": active_user_count(since=timezone.now() - ACTIVE_WINDOW),
        }
        return Response(self.OutputSerializer(data).data)
