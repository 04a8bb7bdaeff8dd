"""Fixtures of the knowledge-base tests: an isolated MEDIA_ROOT, document builders, tasks run inline."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest

from agents.services import document_create, document_ingest
from tests.servers import free_port, stop_process


@pytest.fixture(autouse=True)
def _own_media_root(media_root):
    """Every knowledge-base test stores its uploads in a folder of its own (the root conftest's media_root)."""
    return media_root


def make_pdf(*lines: str) -> bytes:
    """Return a small valid one-page PDF showing ``lines`` (Helvetica), built by hand: no PDF writer here."""
    text = " ".join(f"({line.replace('(', '').replace(')', '')}) Tj 0 -16 Td" for line in lines)
    content = f"BT /F1 12 Tf 72 720 Td {text} ET".encode()
    objects = [
        b"<< /Type /Catalog /Pages 2 0 R >>",
        b"<< /Type /Pages /Kids [3 0 R] /Count 1 >>",
        b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] /Contents 4 0 R "
        b"/Resources << /Font << /F1 5 0 R >> >> >>",
        b"<< /Length %d >>\nstream\n" % len(content) + content + b"\nendstream",
        b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>",
    ]
    out = b"%PDF-1.4\n"
    offsets = []
    for number, body in enumerate(objects, start=1):
        offsets.append(len(out))
        out += b"%d 0 obj\n" % number + body + b"\nendobj\n"
    xref = len(out)
    out += b"xref\n0 %d\n0000000000 65535 f \n" % (len(objects) + 1)
    out += b"".join(b"%010d 00000 n \n" % offset for offset in offsets)
    out += b"trailer\n<< /Size %d /Root 1 0 R >>\nstartxref\n%d\n%%%%EOF\n" % (len(objects) + 1, xref)
    return out


def ingested(*, owner, text: str, filename: str = "notes.txt", title: str = ""):
    """Create ``owner``'s document from ``text`` and ingest it here (no worker); return it, ready."""
    document = document_create(owner=owner, data=text.encode(), filename=filename, title=title, ingest=False)
    return document_ingest(document_id=document.pk)


# MCP servers (tests/agents/mcp_server.py: the SDK's MCPServer, recording each call in a file).

MCP_SERVER_SCRIPT = Path(__file__).with_name("mcp_server.py")


@contextmanager
def mcp_server_process(transport: str, record: Path):
    """Start ``mcp_server.py`` over ``transport`` (``streamable-http`` or ``sse``); yield its base URL."""
    port = free_port()
    log = open(record.with_suffix(".log"), "wb")  # noqa: SIM115 (closed below)
    process = subprocess.Popen(  # noqa: S603
        [
            sys.executable,
            str(MCP_SERVER_SCRIPT),
            "--transport",
            transport,
            "--port",
            str(port),
            "--record",
            str(record),
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            if process.poll() is not None:
                raise RuntimeError(f"the MCP server exited: {record.with_suffix('.log').read_text()[-2000:]}")
            try:
                httpx.get(base, timeout=0.5)
                break
            except httpx.HTTPError:
                if time.monotonic() > deadline:
                    raise RuntimeError("the MCP server did not start within 30 s") from None
                time.sleep(0.1)
        yield base
    finally:
        stop_process(process)
        log.close()


@pytest.fixture(scope="module")
def mcp_record(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("mcp") / "calls.jsonl"


@pytest.fixture(scope="module")
def mcp_http(mcp_record):
    """The test MCP server over Streamable HTTP for the whole module; its endpoint URL."""
    with mcp_server_process("streamable-http", mcp_record) as base:
        yield f"{base}/mcp"


@pytest.fixture
def calls(mcp_record):
    """Return a function giving the tool calls the MCP servers recorded during this test."""
    mcp_record.write_text("")

    def read() -> list[dict]:
        if not mcp_record.exists():
            return []
        lines = mcp_record.read_text().splitlines()
        return [{k: v for k, v in json.loads(line).items() if k != "at"} for line in lines if line]

    return read
