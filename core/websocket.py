"""The base of Parley's WebSocket consumers: JSON object frames, decoded with the API's limits.

A frame that is binary, not JSON, not a JSON object, nested too deeply or holding NUL or a lone
surrogate (see :func:`core.parsers.json_loads`) is answered with ``{"type": "error", "code",
"detail"}`` and the socket stays open. Channels' own decoding raises instead, which closes the
socket with 1011 and no word to the client.
"""

from __future__ import annotations

from channels.generic.websocket import AsyncJsonWebsocketConsumer

from .parsers import UnsafeJSON, json_loads


class JsonWebsocketConsumer(AsyncJsonWebsocketConsumer):
    """``AsyncJsonWebsocketConsumer`` that answers undecodable frames with an ``error`` frame.

    ``receive_json(content)`` is called with JSON objects (``dict``) only.
    """

    async def send_error(self, code: str, detail: str, **extra) -> None:
        await self.send_json({"type": "error", "code": code, "detail": detail, **extra})

    async def receive(self, text_data=None, bytes_data=None, **kwargs) -> None:
        if text_data is None:
            await self.send_error("invalid_frame", "Send text frames holding JSON; binary frames are not accepted.")
            return
        try:
            content = await self.decode_json(text_data)
        except UnsafeJSON as exc:
            await self.send_error("invalid_json", f"The frame is not accepted: {exc}")
            return
        if not isinstance(content, dict):
            await self.send_error("invalid_json", "Each frame must be a JSON object.")
            return
        await self.receive_json(content, **kwargs)

    @classmethod
    async def decode_json(cls, text_data: str):
        return json_loads(text_data)
