"""Builders of test data shared by several test modules: messages linked as a turn links them, and
images (real files, made with Pillow)."""

from __future__ import annotations

import base64
import io
import struct
import zlib

from PIL import Image

from chat.models import Conversation, Message

CAMERA_MODEL = "SecretCam 9000"  # written into test photos' EXIF; must never reach storage


def message_add(*, conversation: Conversation, role: str, content: str = "", **fields) -> Message:
    """Store a finished message at the end of ``conversation``'s active path, without a turn; return it.

    It follows the active leaf and becomes it, as :func:`chat.services.message_send` links messages,
    so it shows in the chat, the message list and share snapshots. ``fields``: any other Message fields.
    """
    leaf_id = Conversation.objects.filter(pk=conversation.pk).values_list("active_leaf_id", flat=True).get()
    message = Message.objects.create(conversation=conversation, role=role, content=content, parent_id=leaf_id, **fields)
    Conversation.objects.filter(pk=conversation.pk).update(active_leaf=message)
    conversation.active_leaf_id = message.pk
    return message


def png_bytes(width: int = 64, height: int = 48, color=(200, 30, 30)) -> bytes:
    """Return a real PNG of ``width`` x ``height`` pixels in one colour."""
    out = io.BytesIO()
    Image.new("RGB", (width, height), color).save(out, format="PNG")
    return out.getvalue()


def jpeg_with_exif(width: int = 64, height: int = 32, *, orientation: int = 6) -> bytes:
    """Return a JPEG whose EXIF names a camera (:data:`CAMERA_MODEL`), a GPS position and an orientation
    (6: shown rotated 90 degrees clockwise, so an upright copy is ``height`` x ``width``)."""
    exif = Image.Exif()
    exif[0x0110] = CAMERA_MODEL  # Model
    exif[0x0112] = orientation  # Orientation
    exif[0x8825] = {1: "N", 2: (48.0, 51.0, 24.0), 3: "E", 4: (2.0, 21.0, 7.0)}  # GPSInfo: Paris
    out = io.BytesIO()
    Image.new("RGB", (width, height), (10, 120, 200)).save(out, format="JPEG", exif=exif.tobytes())
    return out.getvalue()


def bomb_png(width: int = 40_000, height: int = 40_000) -> bytes:
    """Return a tiny PNG (a few hundred bytes) whose header claims ``width`` x ``height`` pixels: a
    decompression bomb. Written by hand, so the test never holds the pixels it claims."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)  # 1-bit greyscale
    rows = zlib.compress(b"\x00" * 1024)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", rows) + chunk(b"IEND", b"")


def data_url(data: bytes, content_type: str = "image/png") -> str:
    return f"data:{content_type};base64,{base64.b64encode(data).decode()}"


def data_url_bytes(url: str) -> bytes:
    """Return the bytes of a base64 data URL (what a model server received)."""
    return base64.b64decode(url.partition(",")[2])


def image_parts(request: dict) -> list[list[dict]]:
    """Return, for each message of a chat request a model server received, its ``image_url`` parts."""
    return [
        [part for part in message["content"] if part.get("type") == "image_url"]
        if isinstance(message.get("content"), list)
        else []
        for message in request["messages"]
    ]
