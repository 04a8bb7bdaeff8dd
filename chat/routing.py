from django.urls import path

from agents.consumers import DocumentsConsumer

from .consumers import ChatConsumer

websocket_urlpatterns = [
    path("ws/chat/<uuid:conversation_id>/", ChatConsumer.as_asgi()),
    path("ws/documents/", DocumentsConsumer.as_asgi()),
]
