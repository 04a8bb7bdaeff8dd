"""Server-side tools for ``/v1/chat/completions``: tools Parley runs for the client (OpenAI's ``{"type": "mcp"}``).

``inference`` cannot import ``agents`` (the apps depend one way: chat → agents → inference), yet the
MCP client lives in ``agents``. So ``agents`` registers a resolver here from ``AgentsConfig.ready()``
(:func:`agents.mcp.mcp_server_tools`), and the gateway asks it, through :func:`server_tools_resolve`,
which tools a ``server_label`` gives a user. One resolver per kind of tool (``"mcp"`` today).

A resolver is ``async (user_id: int, server_label: str, allowed_tools: list[str] | None) ->
list[ServerTool]``; it raises :class:`ServerLabelInvalid` (the user may not use that server, or it
does not exist, or ``allowed_tools`` names a tool the operator does not allow: a 400) or
:class:`ServerToolsUnavailable` (the server could not be listed: a 424).
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import json
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from decimal import Decimal

from .models import ModelConfig
from .pipeline import Generation, Outcome
from .providers import Chunk, GenerationParams, Usage, tool_call_deltas

logger = logging.getLogger(__name__)


class ServerLabelInvalid(Exception):
    """The request names a server the user may not use; ``str()`` says why; ``param_suffix`` the field."""

    def __init__(self, message: str, *, param_suffix: str = "server_label"):
        super().__init__(message)
        self.param_suffix = param_suffix


class ServerToolsUnavailable(Exception):
    """The server could not be listed (down, timed out, misconfigured); ``str()`` names the server."""


@dataclass(frozen=True)
class ServerTool:
    """One tool Parley runs for a request.

    ``name``: the function name offered to the model (``<server slug>__<tool>``, unique among the
    request's tools); ``server_label`` as the client wrote it; ``tool`` the name on the server;
    ``parameters`` its JSON schema; ``run(arguments)`` calls it and never raises: it returns
    ``{"output": str, "ok": bool, "error"?: code}`` (an error's message is the ``output``, for the model).
    """

    name: str
    server_label: str
    tool: str
    description: str
    parameters: dict = field(default_factory=dict)
    run: Callable[[dict], Awaitable[dict]] | None = field(default=None, compare=False, repr=False)

    def openai(self) -> dict:
        """Return it in OpenAI's function-calling shape, as the model is offered it."""
        return {
            "type": "function",
            "function": {"name": self.name, "description": self.description, "parameters": self.parameters},
        }


Resolver = Callable[..., Awaitable[list[ServerTool]]]
_resolvers: dict[str, Resolver] = {}


def server_tools_register(*, kind: str, resolver: Resolver) -> None:
    """Register ``resolver`` for tools of type ``kind`` (e.g. ``"mcp"``); a second registration replaces the first."""
    _resolvers[kind] = resolver


async def server_tools_resolve(
    *, kind: str, user_id: int, server_label: str, allowed_tools: list[str] | None
) -> list[ServerTool]:
    """Return the tools ``server_label`` gives ``user_id`` (only ``allowed_tools`` when given).

    Raise :class:`ServerLabelInvalid` when nothing serves ``kind`` tools, or the resolver's errors.
    """
    resolver = _resolvers.get(kind)
    if resolver is None:
        raise ServerLabelInvalid(f"This server does not run {kind} tools.", param_suffix="type")
    return await resolver(user_id=user_id, server_label=server_label, allowed_tools=allowed_tools)


# The loop: generate, run the server tools the model called, generate again.


@dataclass
class LoopOutcome(Outcome):
    """A :class:`~inference.pipeline.Outcome` over every round of a :class:`ServerToolLoop`.

    ``usage`` is summed over the rounds; ``content`` the text of every round joined; ``tool_calls``
    the final round's calls of the client's own functions; ``ttft_ms`` the first text of any round,
    counted from the request's start (else the last round's); ``cached`` true only when every round
    was; ``costs`` each round's USD cost (None for a cached one).
    """

    costs: list = field(default_factory=list)

    def cost(self, config: ModelConfig) -> Decimal | None:
        """Return the USD cost of every round together; None when none cost anything (all cached)."""
        paid = [cost for cost in self.costs if cost is not None]
        return sum(paid, Decimal(0)) if paid else None


def _arguments(text: str) -> dict | None:
    try:
        value = json.loads(text or "{}")
    except ValueError:
        return None
    return value if isinstance(value, dict) else None


class ServerToolLoop:
    """One ``/v1`` answer with tools Parley runs (``tools``: :class:`ServerTool`, by name) next to the client's.

    Each round is a :class:`~inference.pipeline.Generation` of ``messages`` plus what earlier rounds
    added. When the model calls only server tools (or names no tool it was offered), they are run
    (at the same time, each bounded by its server's timeout; at most ``max_rounds`` of them a round,
    the others get an error result; a name the request did not offer is never run: the model gets
    an error result), the assistant's calls and one ``tool`` message per
    call are appended, and the model generates again, for at most ``max_rounds`` rounds of tools;
    the round after the last is offered the client's functions only. A round that calls any of the
    client's functions ends the loop: those calls (only those) go back to the client
    (``finish_reason: "tool_calls"``); server calls of that round are not run, the model makes them
    again on the client's follow-up. Later rounds ask with ``tool_choice: "auto"`` when the client
    sent ``"required"`` (which would never let the model answer).

    :attr:`calls` lists the server calls run, in OpenAI's ``mcp_call`` shape: ``[{"type": "mcp_call",
    "id", "server_label", "name", "arguments": str, "output": str|None, "error": str|None}]``.
    :attr:`outcome` is a :class:`LoopOutcome`, filled when :meth:`batches` ends.
    """

    def __init__(
        self,
        *,
        config: ModelConfig,
        messages: list[dict],
        params: GenerationParams,
        tools: dict[str, ServerTool],
        user_id: int,
        started: float,
        max_rounds: int,
    ):
        self.config = config
        self.messages = list(messages)
        self.params = params
        self.tools = tools
        self.user_id = user_id
        self.started = started
        self.max_rounds = max_rounds
        self.client_functions = {
            tool["function"]["name"] for tool in params.tools or () if tool["function"]["name"] not in tools
        }
        self.calls: list[dict] = []
        self.outcome = LoopOutcome()

    def _round_params(self, number: int) -> GenerationParams:
        """Return the generation parameters of round ``number`` (0 first)."""
        params = copy.copy(self.params)
        if number == self.max_rounds:  # tools no more: the model answers (or calls the client's functions)
            params.tools = [tool for tool in self.params.tools or () if tool["function"]["name"] not in self.tools]
            if not params.tools:
                params.tools = params.tool_choice = params.parallel_tool_calls = None
        if number and params.tool_choice == "required":
            params.tool_choice = "auto"
        return params

    async def _run(self, call: dict) -> str:
        """Run one server call the model made; return the text for its ``tool`` message. Never raises."""
        function = call["function"]
        tool = self.tools.get(function["name"])
        if tool is None:
            return f"Error: no tool named {function['name']!r} is available. It was not called."
        record = {
            "type": "mcp_call",
            "id": call["id"],
            "server_label": tool.server_label,
            "name": tool.tool,
            "arguments": function["arguments"],
            "output": None,
            "error": None,
        }
        self.calls.append(record)
        arguments = _arguments(function["arguments"])
        if arguments is None:
            record["error"] = "The arguments must be a JSON object. The tool was not called."
            return f"Error: {record['error']}"
        try:
            result = await tool.run(arguments)
        except Exception:  # run() never raises by design; a bug in it must still not fail the request
            logger.exception("Server tool %s failed", tool.name)
            result = {"output": "The tool failed.", "ok": False, "error": "tool_error"}
        if result["ok"]:
            record["output"] = result["output"]
            return result["output"]
        record["error"] = result["output"]
        return f"Error: {result['output']}"

    async def _refuse(self, call: dict, limit: int) -> str:
        """Return the ``tool`` message of a call over the round's limit: it is not run."""
        return f"Error: at most {limit} tool calls are run per round; {call['function']['name']} was not called."

    async def batches(self) -> AsyncIterator[list[Chunk]]:
        """Yield the chunks the client sees: every round's text as it comes (with its logprobs), then
        the final round's calls of client functions (whole), then the finish reason and summed usage.

        Errors of a round are raised as :class:`~inference.pipeline.Generation` raises them.
        """
        outcome = self.outcome
        prompt_tokens = completion_tokens = 0
        texts, logprobs, cached = [], [], []
        messages = self.messages
        for number in range(self.max_rounds + 1):
            generation = Generation(
                config=self.config,
                messages=messages,
                params=self._round_params(number),
                user_id=self.user_id,
                started=self.started,
            )
            async with contextlib.aclosing(generation.batches()) as batches:
                async for batch in batches:
                    text = [Chunk(delta=c.delta, logprobs=c.logprobs) for c in batch if c.delta]
                    if text:
                        yield text
            result = generation.outcome
            usage = result.usage or Usage()
            prompt_tokens += usage.prompt_tokens
            completion_tokens += usage.completion_tokens
            outcome.usage = Usage(prompt_tokens, completion_tokens)  # so far: what an error records
            outcome.costs.append(result.cost(self.config))
            cached.append(result.cached)
            if result.content:
                texts.append(result.content)
                if outcome.ttft_ms is None:
                    outcome.ttft_ms = result.ttft_ms
            logprobs += result.logprobs or []
            outcome.route, outcome.served_by, outcome.cache = result.route, result.served_by, result.cache
            outcome.finish_reason = result.finish_reason
            client_calls = [c for c in result.tool_calls if c["function"]["name"] in self.client_functions]
            if client_calls or not result.tool_calls or number == self.max_rounds:
                outcome.tool_calls = client_calls
                if result.tool_calls and not client_calls:
                    outcome.finish_reason = "stop"  # calls of tools no longer offered: nothing for the client
                if outcome.ttft_ms is None:
                    outcome.ttft_ms = result.ttft_ms
                break
            # A runaway model (or a prompt injected through a result) gets a few calls a round, not a flood.
            limit = max(self.max_rounds, 1)
            outputs = await asyncio.gather(
                *(self._run(call) for call in result.tool_calls[:limit]),
                *(self._refuse(call, limit) for call in result.tool_calls[limit:]),
            )
            messages = [
                *messages,
                {"role": "assistant", "content": result.content, "tool_calls": result.tool_calls},
                *(
                    {"role": "tool", "tool_call_id": call["id"], "content": output}
                    for call, output in zip(result.tool_calls, outputs, strict=True)
                ),
            ]
        outcome.content = "".join(texts)
        outcome.logprobs = logprobs if self.params.logprobs else None
        outcome.cached = all(cached)
        if outcome.tool_calls:
            yield [Chunk(tool_calls=tool_call_deltas(outcome.tool_calls))]
        yield [Chunk(finish_reason=outcome.finish_reason, usage=outcome.usage)]

    async def run(self) -> LoopOutcome:
        """Generate the whole answer without streaming it; return :attr:`outcome`. Errors as :meth:`batches`."""
        async for _ in self.batches():
            pass
        return self.outcome
