"""Conversation imports: ChatGPT's export and Parley's own, read into one plain shape.

Pure functions, no database: :func:`chat.services.import_job_run` writes what they return.

ChatGPT's export (``conversations.json``, alone or in the zip ChatGPT emails) is a list of
conversations ``{"id", "title", "create_time", "update_time", "mapping": {node_id: {"id",
"message": {"author": {"role"}, "content": {"content_type", "parts"}, "create_time", "metadata",
"recipient"}, "parent", "children"}}, "current_node"}``. The messages are a tree (each edit or regeneration a
branch); the one imported is the active branch, from ``current_node`` up to the root.
"""

from __future__ import annotations

import io
import zipfile
from dataclasses import dataclass, field
from datetime import UTC, datetime

from django.utils.dateparse import parse_datetime

from core.parsers import UnsafeJSON, json_loads

from .models import ImportSource, MessageStatus, Role

# The format name and version of Parley's export (conversations.json in the export zip).
EXPORT_FORMAT = "parley"
EXPORT_VERSION = 1

# ChatGPT content types whose parts are text; the others (code run output, browsing, reasoning
# summaries, ...) are tool chatter and are skipped.
_CHATGPT_TEXT_TYPES = {"text", "multimodal_text"}


class ImportFileError(ValueError):
    """The file is not an export Parley can import; the message says why, for the user."""


@dataclass
class ImportedMessage:
    role: str
    content: str
    created_at: datetime | None = None
    status: str = MessageStatus.COMPLETE
    model: str = ""
    error: str = ""


@dataclass
class ImportedConversation:
    """One conversation of a file; ``skip_reason`` set when it cannot be imported as it is."""

    title: str
    original_id: str = ""
    created_at: datetime | None = None
    updated_at: datetime | None = None
    messages: list[ImportedMessage] = field(default_factory=list)
    dropped: int = 0  # nodes or parts left out: system, hidden, tool, empty, images
    skip_reason: str = ""


def export_payload_bytes(*, data: bytes, max_bytes: int) -> bytes:
    """Return the JSON document of an uploaded export: ``data`` itself, or ``conversations.json`` of a zip.

    Raise :class:`ImportFileError` for a zip without ``conversations.json`` (at any folder depth),
    a broken zip, or one whose ``conversations.json`` unpacks to more than ``max_bytes`` bytes.
    """
    if not data.startswith(b"PK"):
        return data
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as archive:
            names = [n for n in archive.namelist() if n.rsplit("/", 1)[-1] == "conversations.json"]
            if not names:
                raise ImportFileError("The zip holds no conversations.json (ChatGPT's and Parley's exports do).")
            info = archive.getinfo(min(names, key=len))
            if info.file_size > max_bytes:
                raise ImportFileError(
                    f"conversations.json unpacks to {info.file_size:,} bytes; the limit is {max_bytes:,}."
                )
            with archive.open(info) as member:
                payload = member.read(max_bytes + 1)  # the declared size may lie
            if len(payload) > max_bytes:
                raise ImportFileError(f"conversations.json unpacks to more than {max_bytes:,} bytes.")
            return payload
    except (zipfile.BadZipFile, zipfile.LargeZipFile, NotImplementedError, EOFError) as exc:
        raise ImportFileError(f"The zip file is damaged or unsupported ({exc}).") from exc


def export_parse(*, data: bytes, max_bytes: int) -> tuple[str, list]:
    """Return ``(source, raw conversations)`` of an uploaded export: source ``chatgpt`` or ``parley``.

    Each raw conversation is turned into an :class:`ImportedConversation` by :func:`conversation_read`
    (one at a time, so that one bad conversation is skipped, not the whole file). Raise
    :class:`ImportFileError` when the file is not JSON (the decoder's message and position), or is
    JSON of another shape.
    """
    payload = export_payload_bytes(data=data, max_bytes=max_bytes)
    try:
        document = json_loads(payload.decode("utf-8-sig") if isinstance(payload, bytes) else payload)
    except UnicodeDecodeError as exc:
        raise ImportFileError(f"The file is not UTF-8 text: {exc}.") from exc
    except UnsafeJSON as exc:
        raise ImportFileError(f"The file is not valid JSON: {exc}") from exc
    if isinstance(document, list):
        return ImportSource.CHATGPT, document
    if isinstance(document, dict) and isinstance(document.get("conversations"), list):
        if document.get("format", EXPORT_FORMAT) != EXPORT_FORMAT:
            raise ImportFileError(f"Unknown export format {document.get('format')!r}.")
        if not isinstance(document.get("version", 1), int) or document.get("version", 1) > EXPORT_VERSION:
            raise ImportFileError(
                f"Parley export version {document.get('version')!r} is newer than this server reads ({EXPORT_VERSION})."
            )
        return ImportSource.PARLEY, document["conversations"]
    raise ImportFileError(
        "The JSON is neither ChatGPT's export (a list of conversations) nor Parley's "
        '({"format": "parley", "conversations": [...]}).'
    )


def conversation_read(*, source: str, raw) -> ImportedConversation:
    """Return ``raw`` (one conversation of a ``source`` export) read; never raise for its content."""
    if not isinstance(raw, dict):
        return ImportedConversation(title="(not a conversation)", skip_reason="Not a JSON object.")
    title = raw.get("title") if isinstance(raw.get("title"), str) else ""
    try:
        if source == ImportSource.CHATGPT:
            return _chatgpt_conversation(raw, title=title)
        return _parley_conversation(raw, title=title)
    except (TypeError, ValueError, AttributeError, KeyError) as exc:
        return ImportedConversation(title=title or "(untitled)", skip_reason=f"Malformed conversation: {exc}.")


def _epoch(value) -> datetime | None:
    """Return ChatGPT's ``create_time`` (seconds since 1970, float) as an aware datetime; None when absent."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    try:
        return datetime.fromtimestamp(value, tz=UTC)
    except (OverflowError, OSError, ValueError):
        return None


def _iso(value) -> datetime | None:
    if not isinstance(value, str):
        return None
    parsed = parse_datetime(value)
    if parsed is not None and parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=UTC)
    return parsed


def chatgpt_active_branch(mapping: dict, current_node: str | None) -> list[dict]:
    """Return the nodes of the active branch, root first: ``current_node`` and its ancestors.

    Without a (known) ``current_node``, the branch ends at the newest leaf. A parent cycle ends the
    walk rather than looping.
    """
    node_id = current_node if current_node in mapping else None
    if node_id is None:
        leaves = [n for n, node in mapping.items() if isinstance(node, dict) and not node.get("children")]

        def created(n) -> float:
            message = mapping[n].get("message")
            when = _epoch(message.get("create_time")) if isinstance(message, dict) else None
            return when.timestamp() if when else 0.0

        node_id = max(leaves, key=created, default=None)
    branch, seen = [], set()
    while node_id is not None and node_id in mapping and node_id not in seen:
        seen.add(node_id)
        node = mapping[node_id]
        if not isinstance(node, dict):
            break
        branch.append(node)
        node_id = node.get("parent")
    branch.reverse()
    return branch


def _chatgpt_conversation(raw: dict, *, title: str) -> ImportedConversation:
    mapping = raw.get("mapping")
    conversation = ImportedConversation(
        title=title,
        original_id=str(raw.get("id") or raw.get("conversation_id") or ""),
        created_at=_epoch(raw.get("create_time")),
        updated_at=_epoch(raw.get("update_time")),
    )
    if not isinstance(mapping, dict):
        conversation.skip_reason = "No message tree (mapping)."
        return conversation
    for node in chatgpt_active_branch(mapping, raw.get("current_node")):
        message = node.get("message")
        if not isinstance(message, dict):
            continue  # the root: no message
        role = (message.get("author") or {}).get("role")
        metadata = message.get("metadata") or {}
        content = message.get("content") or {}
        if (
            role not in (Role.USER, Role.ASSISTANT)
            or metadata.get("is_visually_hidden_from_conversation")
            or message.get("recipient") not in (None, "all")  # the model calling a tool, not answering
            or content.get("content_type") not in _CHATGPT_TEXT_TYPES
        ):
            conversation.dropped += 1
            continue
        parts = content.get("parts") or []
        texts = [part for part in parts if isinstance(part, str)]
        conversation.dropped += len(parts) - len(texts)  # images, audio, files: not imported
        text = "\n\n".join(t for t in texts if t.strip()).strip()
        if not text:
            conversation.dropped += 1
            continue
        conversation.messages.append(
            ImportedMessage(
                role=role,
                content=text,
                created_at=_epoch(message.get("create_time")),
                model=str(metadata.get("model_slug") or "")[:64] if role == Role.ASSISTANT else "",
            )
        )
    return conversation


_PARLEY_STATUSES = {MessageStatus.COMPLETE, MessageStatus.ERROR, MessageStatus.CANCELLED}


def _parley_conversation(raw: dict, *, title: str) -> ImportedConversation:
    conversation = ImportedConversation(
        title=title,
        original_id=str(raw.get("id") or ""),
        created_at=_iso(raw.get("created_at")),
        updated_at=_iso(raw.get("updated_at")),
    )
    messages = raw.get("messages")
    if not isinstance(messages, list):
        conversation.skip_reason = "No messages list."
        return conversation
    for m in messages:
        if (
            not isinstance(m, dict)
            or m.get("role") not in Role.values
            or m.get("superseded")
            or m.get("active") is False
        ):
            conversation.dropped += 1  # other branches (version 1 files: "superseded" answers): the shown one only
            continue
        content = m.get("content") if isinstance(m.get("content"), str) else ""
        status = m.get("status") if m.get("status") in _PARLEY_STATUSES else MessageStatus.CANCELLED
        if m["role"] != Role.ASSISTANT:
            status = MessageStatus.COMPLETE  # only answers stream (chat_only_assistant_messages_stream)
        conversation.messages.append(
            ImportedMessage(
                role=m["role"],
                content=content,
                created_at=_iso(m.get("created_at")),
                status=status,
                model=str(m.get("model") or "")[:64],
                error=m.get("error") if isinstance(m.get("error"), str) else "",
            )
        )
    return conversation
