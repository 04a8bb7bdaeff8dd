from django.apps import AppConfig


class AgentsConfig(AppConfig):
    name = "agents"
    verbose_name = "Agents and knowledge base"

    def ready(self) -> None:
        # Imported here: agents.mcp reads models, which cannot be imported before the app registry is ready.
        from inference.server_tools import server_tools_register

        from .mcp import mcp_server_tools

        # /v1 runs MCP tools through inference, which cannot import agents: it asks this resolver.
        server_tools_register(kind="mcp", resolver=mcp_server_tools)
