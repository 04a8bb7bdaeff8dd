"""Chat's tool for the agent turn: ``conversation_search``, registered in ``ChatConfig.ready``."""

from accounts.models import User
from agents.tools import Tool, ToolContext, ToolError

from .selectors import conversation_list


def _run_conversation_search(arguments: dict, context: ToolContext) -> str:
    query = str(arguments.get("query", "")).strip()
    if not query:
        raise ToolError("Give a query.")
    user = User.objects.get(pk=context.user_id)
    found = conversation_list(user=user, query=query).exclude(pk=context.conversation_id)[:5]
    if not found:
        return "No earlier conversation matches."
    return "Earlier conversations that match: " + "; ".join(
        f"{c.title or 'Untitled'} ({c.updated_at:%Y-%m-%d})" for c in found
    )


CONVERSATION_SEARCH = Tool(
    name="conversation_search",
    description="Find the user's earlier conversations that mention some words.",
    parameters={
        "type": "object",
        "properties": {"query": {"type": "string", "description": "Words to look for."}},
        "required": ["query"],
    },
    run=_run_conversation_search,
    per_user=True,
    cacheable=False,
)
