"""OpenAI-compatible gateway URLs, included under ``/v1/``."""

from django.urls import path

from . import gateway

urlpatterns = [
    path("models", gateway.ModelListGateway.as_view(), name="openai_models"),
    path("chat/completions", gateway.ChatCompletionGateway.as_view(), name="openai_chat_completions"),
    path("embeddings", gateway.EmbeddingGateway.as_view(), name="openai_embeddings"),
]
