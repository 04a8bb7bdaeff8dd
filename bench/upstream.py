"""A fast OpenAI-compatible model server for benchmarks: canned text at a set pace, on loopback.

Run with ``python bench/upstream.py --port 8400 --pace-ms 10`` (``bench/gateway.py`` starts it in
a process of its own). It serves, in OpenAI's wire format (https://platform.openai.com/docs/api-reference/chat):

- ``POST /v1/chat/completions``: an answer of exactly ``max_tokens`` (or ``max_completion_tokens``;
  default 16) chunks, each one word of a canned text (one completion token), the k-th (from 1) due
  ``k * pace`` after the request arrived. Streamed (``"stream": true``): a ``chat.completion.chunk``
  server-sent event per chunk as it falls due, preceded by one with ``delta.role``, then one with
  ``finish_reason`` ``"length"``, then, with ``stream_options.include_usage``, one with empty
  ``choices`` and the usage, then ``data: [DONE]``. Not streamed: one ``chat.completion`` once the
  last chunk would have been due. So one server paces a short request (16 chunks, ~160 ms at
  10 ms) and a long stream (200 chunks, ~2 s) the same way, and streamed and whole answers take
  the same time.
- ``GET /v1/models``: the one model, named by ``--model`` (any requested name is answered).

With ``--max-concurrent C`` it serves at most C requests at once, as a saturated vLLM does: the
others wait (in arrival order) for a slot, and an answer's pace counts from when its slot was taken.

Usage: prompt tokens are the messages' characters / 4 (OpenAI's rule of thumb), completion tokens
the chunks. Chunks are scheduled from the request's arrival, not from the previous write, so a
busy moment delays one chunk without stretching the whole answer.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
import uuid

from aiohttp import web

WORDS = "The keeper climbs the stairs at dusk, trims the wick and lights the lamp for the ships at sea.".split()
DEFAULT_MAX_TOKENS = 16
CHARS_PER_TOKEN = 4  # prompt tokens, estimated: "about 4 characters per token" (help.openai.com, "What are tokens")


def canned_deltas(count: int) -> list[str]:
    """Return ``count`` content deltas: the canned text's words in turn, each after a space but the first."""
    return [("" if i == 0 else " ") + WORDS[i % len(WORDS)] for i in range(count)]


def usage(messages: list, completion_tokens: int) -> dict:
    """Return OpenAI's ``usage`` object for ``messages`` (prompt, estimated) and ``completion_tokens``."""
    characters = sum(len(m.get("content") or "") for m in messages if isinstance(m, dict))
    prompt_tokens = max(1, characters // CHARS_PER_TOKEN)
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
    }


async def chat_completions(request: web.Request) -> web.StreamResponse:
    slots: asyncio.Semaphore | None = request.app["slots"]
    if slots is None:
        return await answer(request)
    async with slots:
        return await answer(request)


async def answer(request: web.Request) -> web.StreamResponse:
    arrived = asyncio.get_running_loop().time()
    body = await request.json()
    pace = request.app["pace"]
    count = body.get("max_completion_tokens") or body.get("max_tokens") or DEFAULT_MAX_TOKENS
    deltas = canned_deltas(count)
    model = body.get("model") or request.app["model"]
    completion_id = f"chatcmpl-{uuid.uuid4().hex}"
    created = int(time.time())
    answer_usage = usage(body.get("messages") or [], count)

    if not body.get("stream"):
        await asyncio.sleep(max(0.0, arrived + count * pace - asyncio.get_running_loop().time()))
        return web.json_response(
            {
                "id": completion_id,
                "object": "chat.completion",
                "created": created,
                "model": model,
                "choices": [
                    {
                        "index": 0,
                        "message": {"role": "assistant", "content": "".join(deltas), "refusal": None},
                        "logprobs": None,
                        "finish_reason": "length",
                    }
                ],
                "usage": answer_usage,
            }
        )

    include_usage = bool((body.get("stream_options") or {}).get("include_usage"))
    base = {"id": completion_id, "object": "chat.completion.chunk", "created": created, "model": model}

    def event(choices: list, **extra) -> bytes:
        payload = {**base, "choices": choices, **({"usage": None} if include_usage else {}), **extra}
        return f"data: {json.dumps(payload, separators=(',', ':'))}\n\n".encode()

    def choice(delta: dict, finish_reason: str | None = None) -> list:
        return [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}]

    response = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"})
    await response.prepare(request)
    loop = asyncio.get_running_loop()
    try:
        await response.write(event(choice({"role": "assistant", "content": ""})))
        for k, delta in enumerate(deltas, start=1):
            await asyncio.sleep(max(0.0, arrived + k * pace - loop.time()))
            await response.write(event(choice({"content": delta})))
        await response.write(event(choice({}, "length")))
        if include_usage:
            await response.write(event([], usage=answer_usage))
        await response.write(b"data: [DONE]\n\n")
        await response.write_eof()
    except ConnectionResetError:  # the client went away (e.g. a stopped generation): nothing to finish
        pass
    return response


async def models(request: web.Request) -> web.Response:
    model = {"id": request.app["model"], "object": "model", "created": 0, "owned_by": "bench"}
    return web.json_response({"object": "list", "data": [model]})


def app(*, pace_ms: float, model: str, max_concurrent: int = 0) -> web.Application:
    """Return the server's application: chunks ``pace_ms`` milliseconds apart, model name ``model``,
    at most ``max_concurrent`` requests answered at once (0: no limit)."""
    application = web.Application()
    application["slots"] = asyncio.Semaphore(max_concurrent) if max_concurrent > 0 else None
    application["pace"] = pace_ms / 1000
    application["model"] = model
    application.router.add_post("/v1/chat/completions", chat_completions)
    application.router.add_get("/v1/models", models)
    return application


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--pace-ms", type=float, default=10.0, help="milliseconds between chunks (default 10)")
    parser.add_argument("--model", default="bench-upstream", help="the model name /v1/models lists")
    parser.add_argument(
        "--max-concurrent", type=int, default=0, help="requests answered at once; others wait (default 0: no limit)"
    )
    args = parser.parse_args()
    # Loopback only; no access log: writing a line per request would slow the server being measured.
    web.run_app(
        app(pace_ms=args.pace_ms, model=args.model, max_concurrent=args.max_concurrent),
        host="127.0.0.1",
        port=args.port,
        access_log=None,
        print=None,
        shutdown_timeout=1,  # on SIGTERM, do not wait for streams still open
    )


if __name__ == "__main__":
    main()
