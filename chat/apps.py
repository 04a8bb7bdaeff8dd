from django.apps import AppConfig


class ChatConfig(AppConfig):
    name = "chat"
    verbose_name = "Chat"

    def ready(self) -> None:
        # Imported here: both modules import models, which cannot load before the app registry is ready.
        from agents.tools import tool_register

        from .tools import CONVERSATION_SEARCH

        tool_register(CONVERSATION_SEARCH)
