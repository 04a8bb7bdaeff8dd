"""A real MCP server for the tests, built with the official SDK's ``MCPServer``; every call is recorded.

Run: ``python tests/agents/mcp_server.py --transport stdio|streamable-http|sse [--port N] --record FILE``.
Each tool call appends one JSON line ``{"tool": name, "arguments": {...}}`` to FILE before it runs,
so a test can tell exactly which tools were called, with which arguments, whatever the transport.
"""

from __future__ import annotations

import argparse
import json
import time

import anyio
from mcp.server import MCPServer
from mcp.server.mcpserver import Context

parser = argparse.ArgumentParser()
parser.add_argument("--transport", default="stdio", choices=["stdio", "streamable-http", "sse"])
parser.add_argument("--port", type=int, default=0)
parser.add_argument("--record", required=True)
options = parser.parse_args()

server = MCPServer("parley-test-tools", log_level="WARNING")


def record(tool: str, **arguments) -> None:
    with open(options.record, "a", encoding="utf-8") as file:
        file.write(json.dumps({"tool": tool, "arguments": arguments, "at": time.time()}) + "\n")


@server.tool()
def lookup_order(order_id: str) -> str:
    """Look up an order's status by its id."""
    record("lookup_order", order_id=order_id)
    return f"Order {order_id} shipped on 3 December by parcel post, tracking number ZX-{order_id[::-1]}."


@server.tool()
def add(a: int, b: int) -> int:
    """Add two whole numbers."""
    record("add", a=a, b=b)
    return a + b


@server.tool()
async def hang(seconds: float = 600) -> str:
    """Take a very long time (a tool that hangs)."""
    record("hang", seconds=seconds)
    await anyio.sleep(seconds)
    return "finally"


@server.tool()
def delete_everything() -> str:
    """Delete every record (a tool no operator allows)."""
    record("delete_everything")
    return "deleted"


@server.tool()
def big(size: int) -> str:
    """Return a long text of ``size`` characters."""
    record("big", size=size)
    return "x" * size


@server.tool()
def whoami(ctx: Context) -> str:
    """Return the Authorization and X-Api-Key headers this call came with (HTTP transports)."""
    record("whoami")
    request = ctx.request_context.request
    if request is None:
        return "no HTTP request"
    return f"authorization={request.headers.get('authorization')} x-api-key={request.headers.get('x-api-key')}"


@server.tool()
def fail() -> str:
    """Always fail."""
    record("fail")
    raise ValueError("the order database is offline")


if options.transport == "stdio":
    server.run("stdio")
elif options.transport == "sse":
    server.run("sse", host="127.0.0.1", port=options.port)
else:
    server.run("streamable-http", host="127.0.0.1", port=options.port)
