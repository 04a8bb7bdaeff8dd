"""MCP client: list and call the tools of the MCP servers operators registered (:class:`agents.models.McpServer`).

Runs the official ``mcp`` SDK's :class:`mcp.Client` (async) over Streamable HTTP, SSE or stdio. Each
listing or call opens its own connection (a stdio server is started for it and stopped after), the
whole of it bounded by the server's ``timeout_seconds``. A turn reads a server's tool list from a
short per-process cache (``MCP_TOOLS_CACHE_SECONDS``, keyed by the server and its last change), so
it does not list every time. Failures become :class:`McpError` with a message fit for the user and
the model: the server's name and what went wrong, never a secret.

In a turn (see :mod:`agents.graph`): :func:`mcp_tools_for_turn` gives the user's allowed tools, named
``<server slug>__<tool>``; :func:`mcp_tool_run` validates the model's arguments against the tool's
JSON schema, calls it, truncates a long result (``MCP_RESULT_MAX_CHARS``) and caches it in the
``tool`` layer (key: server, tool, arguments, and the user unless the server is ``shared``).

Over ``/v1`` (``tools: [{"type": "mcp", "server_label"}]``): :func:`mcp_server_tools`, registered with
:mod:`inference.server_tools`, gives the same tools under the same rules, and runs them with
:func:`mcp_tool_run`.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import re
import time
from contextlib import AsyncExitStack
from dataclasses import dataclass, field

import anyio
import httpx2
import jsonschema
from asgiref.sync import async_to_sync
from channels.db import database_sync_to_async
from django.conf import settings
from mcp import Client, StdioServerParameters
from mcp.client.sse import sse_client
from mcp.client.streamable_http import streamable_http_client
from mcp.shared._httpx_utils import create_mcp_http_client
from mcp.shared.exceptions import MCPError

from inference.cache import canonical_key
from inference.cache import layer as cache_layer
from inference.server_tools import ServerLabelInvalid, ServerTool, ServerToolsUnavailable

from .models import McpServer, McpTransport
from .selectors import mcp_servers_for_user

logger = logging.getLogger(__name__)

SEPARATOR = "__"  # <server slug>__<tool>
FUNCTION_NAME = re.compile(r"[A-Za-z0-9_-]{1,64}")  # what OpenAI function calling accepts as a name


class McpError(Exception):
    """A listing or call failed; ``str()`` is a message for the user and the model.

    ``code``: ``unavailable`` (could not connect or the connection broke), ``timeout``,
    ``config`` (an environment variable is not set), ``server_error`` (the server answered an error).
    """

    def __init__(self, message: str, *, code: str = "unavailable"):
        super().__init__(message)
        self.code = code


@dataclass(frozen=True)
class McpServerSpec:
    """What a connection needs of an :class:`McpServer`, read once: safe to pass between threads and steps."""

    id: str
    slug: str
    name: str
    transport: str
    url: str
    command: str
    args: tuple[str, ...]
    env_passthrough: tuple[str, ...]
    bearer_token_env: str
    header_envs: tuple[tuple[str, str], ...]
    timeout: float
    allow_all_tools: bool
    allowed_tools: tuple[str, ...]
    shared: bool
    cache_results: bool
    version: str  # when the server was last changed: part of the tool-list cache key

    @classmethod
    def of(cls, server: McpServer) -> McpServerSpec:
        return cls(
            id=str(server.pk),
            slug=server.slug,
            name=server.name or server.slug,
            transport=server.transport,
            url=server.url,
            command=server.command,
            args=tuple(server.args or ()),
            env_passthrough=tuple(server.env_passthrough or ()),
            bearer_token_env=server.bearer_token_env,
            header_envs=tuple(sorted((server.header_envs or {}).items())),
            timeout=server.timeout_seconds,
            allow_all_tools=server.allow_all_tools,
            allowed_tools=tuple(server.allowed_tools or ()),
            shared=server.shared,
            cache_results=server.cache_results,
            version=server.updated_at.isoformat() if server.updated_at else "",
        )

    def tool_allowed(self, name: str) -> bool:
        return self.allow_all_tools or name in self.allowed_tools


@dataclass(frozen=True)
class McpTool:
    """One tool a server lists: ``name`` as the server knows it, ``input_schema`` a JSON schema."""

    name: str
    description: str
    input_schema: dict


@dataclass(frozen=True)
class McpCallOutcome:
    """A finished call: ``text`` the result as text (not truncated), ``ok`` false for a tool error."""

    text: str
    ok: bool


def _env(name: str, *, what: str, server: McpServerSpec) -> str:
    value = os.environ.get(name)
    if not value:
        raise McpError(f"MCP server {server.name}: the environment variable {name} ({what}) is not set.", code="config")
    return value


def _headers(server: McpServerSpec) -> dict[str, str]:
    headers = {header: _env(env, what=f"header {header}", server=server) for header, env in server.header_envs}
    if server.bearer_token_env:
        headers["Authorization"] = "Bearer " + _env(server.bearer_token_env, what="bearer token", server=server)
    return headers


async def _connect(server: McpServerSpec, stack: AsyncExitStack) -> Client:
    """Open a session with ``server`` on ``stack``; the caller bounds the time."""
    if server.transport == McpTransport.STDIO:
        # The command and its arguments are the operator's (admin, superusers only): never a user's input.
        environment = {name: _env(name, what="passed through", server=server) for name in server.env_passthrough}
        transport = StdioServerParameters(command=server.command, args=list(server.args), env=environment or None)
    elif server.transport == McpTransport.SSE:
        transport = sse_client(
            server.url, headers=_headers(server), timeout=server.timeout, sse_read_timeout=server.timeout
        )
    else:
        http = await stack.enter_async_context(
            create_mcp_http_client(headers=_headers(server), timeout=httpx2.Timeout(server.timeout))
        )
        transport = streamable_http_client(server.url, http_client=http)
    # The SDK's own response cache is per client object, and each connection here is new: off.
    return await stack.enter_async_context(Client(transport, read_timeout_seconds=server.timeout, cache=None))


def _leaf(exc: BaseException) -> BaseException:
    """Return the first non-group exception inside ``exc`` (anyio task groups wrap what their tasks raise)."""
    while isinstance(exc, BaseExceptionGroup) and exc.exceptions:
        exc = exc.exceptions[0]
    return exc


def _explain(server: McpServerSpec, exc: BaseException) -> McpError:
    """Map a failure of the SDK or the network to an :class:`McpError` naming the server."""
    exc = _leaf(exc)
    if isinstance(exc, McpError):
        return exc
    if isinstance(exc, TimeoutError | httpx2.TimeoutException):
        return McpError(f"MCP server {server.name} did not answer within {server.timeout:g} s.", code="timeout")
    if isinstance(exc, MCPError):
        return McpError(f"MCP server {server.name} answered an error: {exc}", code="server_error")
    if isinstance(exc, httpx2.HTTPStatusError):
        status = exc.response.status_code
        return McpError(f"MCP server {server.name} is unavailable (HTTP {status}).")
    if isinstance(exc, httpx2.ConnectError | ConnectionError):
        return McpError(f"MCP server {server.name} is unavailable: could not connect.")
    if isinstance(exc, FileNotFoundError | PermissionError):
        return McpError(f"MCP server {server.name} is unavailable: its command could not be started.")
    detail = str(exc) or type(exc).__name__
    return McpError(f"MCP server {server.name} is unavailable: {detail[:200]}")


async def _bounded(server: McpServerSpec, work) -> object:
    """Run ``await work(client)`` on a fresh session with ``server`` within its timeout; raise :class:`McpError`."""
    try:
        with anyio.fail_after(server.timeout):
            async with AsyncExitStack() as stack:
                client = await _connect(server, stack)
                return await work(client)
    except asyncio.CancelledError:
        raise
    except Exception as exc:  # noqa: BLE001 (every failure becomes a message for the user)
        error = _explain(server, exc)
        logger.warning("MCP server %s: %s (%s)", server.slug, error, type(_leaf(exc)).__name__)
        raise error from exc


async def _list(server: McpServerSpec) -> list[McpTool]:
    async def work(client: Client) -> list[McpTool]:
        tools, cursor = [], None
        for _ in range(20):  # pages; a paginator that never ends cannot hang the listing
            page = await client.list_tools(cursor=cursor)
            tools += [
                McpTool(name=t.name, description=t.description or "", input_schema=t.input_schema) for t in page.tools
            ]
            cursor = page.next_cursor
            if not cursor:
                break
        return tools

    return await _bounded(server, work)


# Tool lists, per process: {(server id, version): (monotonic expiry, tools)}. Failures are not kept.
_listings: dict[tuple[str, str], tuple[float, list[McpTool]]] = {}


async def mcp_tools_list(server: McpServerSpec, *, refresh: bool = False) -> list[McpTool]:
    """Return every tool ``server`` lists (allowed or not), from the cache unless ``refresh``.

    Kept ``MCP_TOOLS_CACHE_SECONDS`` per process; a change of the server (admin) starts afresh.
    Raise :class:`McpError` when the server cannot be listed within its timeout.
    """
    key = (server.id, server.version)
    now = time.monotonic()
    hit = _listings.get(key)
    if hit is not None and hit[0] > now and not refresh:
        return hit[1]
    tools = await _list(server)
    for stale in [k for k, (expires, _) in _listings.items() if expires <= now]:
        _listings.pop(stale, None)  # servers changed or removed since: keep the dict small
    _listings[key] = (now + settings.MCP_TOOLS_CACHE_SECONDS, tools)
    return tools


def mcp_tools_list_sync(server: McpServer, *, refresh: bool = True) -> list[McpTool]:
    """See :func:`mcp_tools_list` (for the admin and commands: sync callers, a fresh listing by default)."""
    return async_to_sync(mcp_tools_list)(McpServerSpec.of(server), refresh=refresh)


def _result_text(result) -> str:
    """Return a ``CallToolResult``'s content as text: text blocks joined, others named, else its structured content."""
    parts = []
    for block in result.content or []:
        kind = getattr(block, "type", "")
        if kind == "text":
            parts.append(block.text)
        elif kind == "resource" and hasattr(block.resource, "text"):
            parts.append(block.resource.text)
        else:
            parts.append(f"[{kind or 'content'} not shown]")
    if not any(p.strip() for p in parts) and result.structured_content is not None:
        return json.dumps(result.structured_content, ensure_ascii=False)
    return "\n".join(parts)


async def mcp_tool_call(server: McpServerSpec, *, name: str, arguments: dict) -> McpCallOutcome:
    """Call ``server``'s tool ``name`` with ``arguments`` (not checked here) within the server's timeout.

    Raise :class:`McpError` when the server is unavailable, times out or rejects the call; a tool
    that reports an error (``isError``) gives ``ok=False`` with its message.
    """

    async def work(client: Client) -> McpCallOutcome:
        result = await client.call_tool(name, arguments)
        return McpCallOutcome(text=_result_text(result), ok=not result.is_error)

    return await _bounded(server, work)


# A turn's tools.


@dataclass(frozen=True)
class TurnTool:
    """An MCP tool offered in one turn: ``name`` is ``<slug>__<tool>``, ``parameters`` its JSON schema."""

    name: str
    server: McpServerSpec
    tool: str
    description: str
    parameters: dict = field(default_factory=dict)

    def openai(self) -> dict:
        """Return it in OpenAI's function-calling shape."""
        return {
            "type": "function",
            "function": {"name": self.name, "description": self.description, "parameters": self.parameters},
        }


def tool_name(server_slug: str, tool: str) -> str:
    return f"{server_slug}{SEPARATOR}{tool}"


async def mcp_tools_for_turn(servers: list[McpServerSpec]) -> tuple[dict[str, TurnTool], list[dict]]:
    """Return ``({name: TurnTool}, unavailable)`` for ``servers`` (the user's, see ``mcp_servers_for_user``).

    Only allowed tools, named ``<slug>__<tool>``; servers are listed at the same time (each within
    its timeout). ``unavailable``: ``[{"server": slug, "error": message}]`` of those that failed.
    """
    listings = await asyncio.gather(*(mcp_tools_list(s) for s in servers), return_exceptions=True)
    tools: dict[str, TurnTool] = {}
    unavailable = []
    for server, listing in zip(servers, listings, strict=True):
        if isinstance(listing, BaseException):
            if not isinstance(listing, McpError):
                if isinstance(listing, asyncio.CancelledError):
                    raise listing
                listing = _explain(server, listing)
            unavailable.append({"server": server.slug, "error": str(listing)})
            continue
        for tool in listing:
            if not server.tool_allowed(tool.name):
                continue
            name = tool_name(server.slug, tool.name)
            if not FUNCTION_NAME.fullmatch(name):  # OpenAI refuses a whole request with one such name
                logger.warning(
                    "MCP server %s: tool %r left out: its name does not fit a function name", server.slug, tool.name
                )
                continue
            description = f"{tool.description} (from {server.name})".strip()
            schema = tool.input_schema if isinstance(tool.input_schema, dict) else {}
            tools[name] = TurnTool(
                name=name, server=server, tool=tool.name, description=description[:1024], parameters=schema
            )
    return tools, unavailable


def truncate(text: str, limit: int) -> str:
    """Return ``text``, cut to ``limit`` characters with a note saying so when longer."""
    if len(text) <= limit:
        return text
    return text[:limit] + f"\n[truncated: the result had {len(text):,} characters; the first {limit:,} are shown]"


def summarize(text: str, limit: int = 200) -> str:
    """Return a one-line summary of a result for a step shown to the user."""
    line = " ".join(text.split())
    return line if len(line) <= limit else line[: limit - 1] + "…"


async def mcp_tool_run(*, tool: TurnTool, arguments: dict, user_id: int) -> dict:
    """Run ``tool`` for ``user_id``'s turn; return ``{"result", "ok", "cached", "error"?}``. Never raises.

    ``arguments`` are validated against the tool's JSON schema first: invalid ones are never sent.
    Results over ``MCP_RESULT_MAX_CHARS`` are truncated with a note. Successful results are kept in
    the ``tool`` layer when the server caches results (key: server, tool, arguments, and the user
    unless the server is shared). ``error``: ``invalid_arguments``, ``tool_error``, or an
    :class:`McpError` code (``unavailable``, ``timeout``, ...).
    """
    server = tool.server
    if not isinstance(arguments, dict):
        return {
            "result": "The arguments must be a JSON object.",
            "ok": False,
            "cached": False,
            "error": "invalid_arguments",
        }
    try:
        jsonschema.validate(arguments, tool.parameters or {"type": "object"})
    except jsonschema.ValidationError as exc:
        where = "/".join(map(str, exc.absolute_path)) or "arguments"
        message = f"Invalid arguments for {tool.name} ({where}): {exc.message[:300]}. The tool was not called."
        return {"result": message, "ok": False, "cached": False, "error": "invalid_arguments"}
    except jsonschema.SchemaError:
        logger.warning(
            "MCP server %s: tool %s has an invalid input schema; calling without checking", server.slug, tool.tool
        )
    cache = cache_layer("tool")
    key = None
    if server.cache_results:
        key = canonical_key(
            {
                "mcp": server.id,
                "tool": tool.tool,
                "arguments": arguments,
                "user": None if server.shared else user_id,
            }
        )
        cached = await asyncio.to_thread(cache.get, key)
        if cached is not None:
            return {"result": cached["result"], "ok": True, "cached": True}
    try:
        outcome = await mcp_tool_call(server, name=tool.tool, arguments=arguments)
    except McpError as exc:
        return {"result": str(exc), "ok": False, "cached": False, "error": exc.code}
    result = truncate(outcome.text, settings.MCP_RESULT_MAX_CHARS)
    if not outcome.ok:
        return {"result": result, "ok": False, "cached": False, "error": "tool_error"}
    if key is not None:
        await asyncio.to_thread(cache.set, key, {"result": result})
    return {"result": result, "ok": True, "cached": False}


# /v1/chat/completions: {"type": "mcp", "server_label", "allowed_tools"?} (see inference.server_tools).


def _server_for_label(*, user_id: int, server_label: str) -> McpServer | None:
    """Return the enabled server ``user_id`` may use whose slug is ``server_label`` (else whose name is, any case)."""
    servers = mcp_servers_for_user(user_id=user_id)
    for server in servers:
        if server.slug == server_label:
            return server
    for server in servers:
        if server.name and server.name.casefold() == server_label.casefold():
            return server
    return None


async def mcp_server_tools(*, user_id: int, server_label: str, allowed_tools: list[str] | None) -> list[ServerTool]:
    """Return the tools of the MCP server ``server_label`` that ``user_id`` may have run over ``/v1``.

    The rules of a chat turn: an enabled server, open to the user's groups (``mcp_servers_for_user``),
    only the tools its allow-list allows, narrowed further to ``allowed_tools`` when given. Each
    tool's ``run`` is :func:`mcp_tool_run` (schema check, result size limit, the ``tool`` cache).
    Raise :class:`ServerLabelInvalid` for a server the user cannot use (the same message whether it
    does not exist or is closed to them) or an ``allowed_tools`` name the operator does not allow;
    :class:`ServerToolsUnavailable` when the server cannot be listed within its timeout.
    """
    server = await database_sync_to_async(_server_for_label)(user_id=user_id, server_label=server_label)
    if server is None:
        raise ServerLabelInvalid(f"No MCP server '{server_label}' is available to you.")
    spec = McpServerSpec.of(server)
    refused = [name for name in allowed_tools or () if not spec.tool_allowed(name)]
    if refused:
        raise ServerLabelInvalid(
            f"The MCP server '{server_label}' does not allow the tool '{refused[0]}'.", param_suffix="allowed_tools"
        )
    turn_tools, unavailable = await mcp_tools_for_turn([spec])
    if unavailable:
        raise ServerToolsUnavailable(unavailable[0]["error"])

    def runner(turn_tool: TurnTool):
        async def run(arguments: dict) -> dict:
            outcome = await mcp_tool_run(tool=turn_tool, arguments=arguments, user_id=user_id)
            result = {"output": outcome["result"], "ok": outcome["ok"]}
            if outcome.get("error"):
                result["error"] = outcome["error"]
            return result

        return run

    return [
        ServerTool(
            name=name,
            server_label=server_label,
            tool=turn_tool.tool,
            description=turn_tool.description,
            parameters=turn_tool.parameters,
            run=runner(turn_tool),
        )
        for name, turn_tool in turn_tools.items()
        if allowed_tools is None or turn_tool.tool in allowed_tools
    ]
