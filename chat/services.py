"""Writes for conversations and messages: the only code that creates or changes them."""

from __future__ import annotations

import json
import logging
import secrets
import shutil
import tempfile
import time
import uuid
import zipfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import timedelta
from decimal import Decimal

from django.conf import settings
from django.contrib.auth.models import Group
from django.core.exceptions import ValidationError
from django.core.files.base import ContentFile
from django.core.files.storage import default_storage
from django.db import transaction
from django.db.models import F, Func, IntegerField, JSONField, QuerySet, Sum, Value, prefetch_related_objects
from django.db.models.expressions import CombinedExpression
from django.db.models.functions import Length
from django.utils import timezone
from django.utils.text import slugify
from rest_framework import status

from accounts.budgets import budget_release
from accounts.metering import Admission
from accounts.models import APIKey, UsageSource, User
from accounts.quotas import generation_release, generations_lapsed
from accounts.services import audit_record
from core.errors import ParleyError
from core.events import event_emit
from core.queue import task_enqueue_on_commit
from inference.images import image_clean, image_thumbnail, vision_check
from inference.models import ModelConfig
from inference.providers import IMAGE_PROMPT_TOKENS, GenerationParams
from inference.selectors import model_config_get
from inference.services import CHARS_PER_TOKEN, cost_estimate, generation_params

from .exports import (
    conversation_export_data,
    conversations_export_json,
    conversations_export_markdown,
    conversations_for_export,
)
from .imports import (
    EXPORT_FORMAT,
    EXPORT_VERSION,
    ImportedConversation,
    ImportFileError,
    conversation_read,
    export_parse,
)
from .models import (
    Attachment,
    Conversation,
    CustomInstructions,
    Feedback,
    ImportJob,
    ImportStatus,
    Message,
    MessageStatus,
    Prompt,
    PromptVisibility,
    Rating,
    Role,
    SharedConversation,
)
from .selectors import (
    generation_active,
    generation_running,
    generations_unfinished,
    message_leaf_latest,
    message_list,
    orphan_grace,
)

logger = logging.getLogger(__name__)

TITLE_LENGTH = 60  # characters of the first message used as a conversation's title


def conversation_create(*, owner: User, title: str = "", model: ModelConfig | None = None) -> Conversation:
    """Create a conversation for ``owner``. An empty title is filled from the first message."""
    return Conversation.objects.create(owner=owner, title=title.strip()[:200], model=model)


def conversation_update(
    *, conversation: Conversation, title: str | None = None, archived: bool | None = None
) -> Conversation:
    """Rename and/or archive (``archived=True``) or unarchive ``conversation``; ``None`` leaves a field be.

    The title is stripped and cut to 200 characters. Archiving keeps the first ``archived_at``.
    Neither counts as activity: ``updated_at`` (the list's order) does not change. Return it.
    """
    update_fields = []
    if title is not None:
        conversation.title = title.strip()[:200]
        update_fields.append("title")
    if archived is not None and archived != (conversation.archived_at is not None):
        conversation.archived_at = timezone.now() if archived else None
        update_fields.append("archived_at")
    if update_fields:
        # Conversation.updated_at is auto_now, but only listed fields are written.
        conversation.save(update_fields=update_fields)
    return conversation


def conversation_delete(*, conversation: Conversation) -> None:
    """Delete ``conversation`` with its messages and their feedback.

    Raise :class:`ParleyError` ``generation_in_progress`` (409) while an answer is being generated in
    it: stop it first (the running turn would otherwise have no message to store its answer in).
    """
    with transaction.atomic():
        locked = Conversation.objects.select_for_update().get(pk=conversation.pk)
        _check_no_generation(locked)
        files = [
            name
            for pair in Attachment.objects.filter(message__conversation=locked).values_list("file", "thumbnail")
            for name in pair
        ]
        locked.delete()
        transaction.on_commit(lambda: _files_delete(files))


def _files_delete(names: list[str]) -> None:
    """Delete stored files (attachments' images) by name; a file already gone is not an error."""
    for name in names:
        try:
            if name:
                default_storage.delete(name)
        except Exception:  # a storage hiccup leaves a file behind, never fails the caller
            logger.warning("Could not delete the stored file %s", name, exc_info=True)


def attachment_create(*, owner: User, data: bytes, filename: str = "") -> Attachment:
    """Store ``data`` as an image of ``owner``'s, not yet attached to a message; return it.

    The image is cleaned first (:func:`inference.images.image_clean`: its type read from its bytes,
    its EXIF and other metadata stripped) and stored with a WebP thumbnail in ``STORAGES["default"]``
    under ``private/attachments/``; ``filename`` (the client's name) is only recorded. Raise
    :class:`ParleyError`: 400 ``invalid_image``, 413 ``image_too_large`` / ``image_too_many_pixels``,
    415 ``unsupported_image_type``. Attach it by passing its id to :func:`message_send`.
    """
    image = image_clean(data=data)
    thumbnail = image_thumbnail(data=image.data)
    attachment = Attachment(
        owner=owner,
        content_type=image.content_type,
        width=image.width,
        height=image.height,
        size_bytes=len(image.data),
        sha256=image.sha256,
        filename=(filename or "")[-255:],
    )
    attachment.file.save(f"image{image.extension}", ContentFile(image.data), save=False)
    attachment.thumbnail.save("thumbnail.webp", ContentFile(thumbnail), save=False)
    try:
        attachment.save()
    except BaseException:
        _files_delete([attachment.file.name, attachment.thumbnail.name])
        raise
    return attachment


def attachments_discard(*, owner: User, ids: list) -> int:
    """Delete ``owner``'s images ``ids`` that were never sent (no message), with their files; return how many.

    For an interface that stored images for a message that was then refused: they are not left behind.
    """
    rows = Attachment.objects.filter(pk__in=ids, owner=owner, message__isnull=True)
    files = [name for pair in rows.values_list("file", "thumbnail") for name in pair]
    deleted, _ = rows.delete()
    transaction.on_commit(lambda: _files_delete(files))
    return deleted


def _conversation_images(conversation: Conversation) -> int:
    """Return how many images the messages of the shown branch hold (each turn sends them all to the model)."""
    return Attachment.objects.filter(message__in=message_list(conversation=conversation)).count()


EXPORT_FORMATS = {"json": conversations_export_json, "markdown": conversations_export_markdown}


@transaction.atomic
def conversations_export(*, conversations: QuerySet[Conversation], format: str) -> str:
    """Return ``conversations`` exported as ``format`` (``json`` or ``markdown``, see :mod:`chat.exports`).

    Each exported conversation is a ``conversation.export`` audit event (its owner, message count and
    format), written before the text is handed out. Raise ValueError for another format.
    """
    if format not in EXPORT_FORMATS:
        raise ValueError(f"Unknown export format {format!r}; use json or markdown.")
    exported = list(conversations_for_export(conversations))
    _export_audit(exported, format=format)
    return EXPORT_FORMATS[format](exported)


def _export_audit(conversations: list[Conversation], *, format: str) -> None:
    for conversation in conversations:
        audit_record(
            action="conversation.export",
            target=conversation,
            changes={
                "format": format,
                "owner": conversation.owner.username,
                "messages": len(conversation.messages.all()),
            },
        )


EXPORT_BATCH = 100  # conversations (with their messages) held in memory at once while zipping


def conversations_export_zip(*, conversations: QuerySet[Conversation], out) -> int:
    """Write ``conversations`` to ``out`` (a writable binary file) as a zip; return how many.

    The zip holds ``conversations.json`` (``{"format": "parley", "version": 1, "exported_at",
    "conversations": [...]}``, each as :func:`chat.exports.conversation_export_data`; what
    :func:`import_job_create` reads back) and ``markdown/<nnnn>-<title>.md``, one Markdown file per
    conversation. Conversations are read ``EXPORT_BATCH`` at a time, so memory stays bounded;
    each is a ``conversation.export`` audit event (format ``zip``), written before it is zipped.
    """
    ids = list(conversations.order_by("created_at", "pk").values_list("pk", flat=True))
    with (
        tempfile.SpooledTemporaryFile(max_size=8 * 1024 * 1024) as data,
        zipfile.ZipFile(out, "w", compression=zipfile.ZIP_DEFLATED) as archive,
    ):
        head = {"format": EXPORT_FORMAT, "version": EXPORT_VERSION, "exported_at": timezone.now().isoformat()}
        data.write(json.dumps(head, ensure_ascii=False)[:-1].encode() + b', "conversations": [\n')
        number = 0
        for start in range(0, len(ids), EXPORT_BATCH):
            batch = list(
                conversations_for_export(Conversation.objects.filter(pk__in=ids[start : start + EXPORT_BATCH]))
            )
            batch.sort(key=lambda c: (c.created_at, str(c.pk)))
            _export_audit(batch, format="zip")
            for conversation in batch:
                number += 1
                entry = json.dumps(conversation_export_data(conversation), ensure_ascii=False, indent=2)
                data.write((",\n" if number > 1 else "").encode() + entry.encode())
                name = slugify(str(conversation))[:60] or "conversation"
                archive.writestr(f"markdown/{number:04d}-{name}.md", conversations_export_markdown([conversation]))
        data.write(b"\n]}\n")
        data.seek(0)
        with archive.open("conversations.json", "w", force_zip64=True) as member:
            shutil.copyfileobj(data, member)
    return number


def import_job_create(*, owner: User, data: bytes, filename: str = "", enqueue: bool = True) -> ImportJob:
    """Store an uploaded export (``data``: the whole file) as ``owner``'s import job, ``queued``.

    The file is read later, by :func:`import_job_run` (in Celery when ``enqueue``, queued once the
    job is committed; else the caller runs it). Raise :class:`ParleyError` ``empty_file`` (400) or
    ``file_too_large`` (413, over ``IMPORT_MAX_BYTES`` bytes). Audited as ``conversation.import``.
    """
    limit = settings.IMPORT_MAX_BYTES
    if not data:
        raise ParleyError("The file is empty.", code="empty_file")
    if len(data) > limit:
        raise import_too_large(size=len(data))
    with transaction.atomic():
        job = ImportJob.objects.create(owner=owner, data=data, size_bytes=len(data), filename=(filename or "")[-255:])
        audit_record(
            action="conversation.import",
            target=job,
            changes={"owner": owner.username, "filename": job.filename, "size_bytes": job.size_bytes},
        )
        if enqueue:
            from .tasks import import_job_run_task  # here: chat.tasks imports this module

            task_enqueue_on_commit(import_job_run_task, str(job.pk))
    return job


def import_too_large(*, size: int) -> ParleyError:
    """Return the 413 ``file_too_large`` error of an import of ``size`` bytes, over ``IMPORT_MAX_BYTES``."""

    def said(n: int) -> str:
        return f"{n / 1048576:.1f} MiB" if n >= 1048576 else f"{n:,} bytes"

    return ParleyError(
        f"The file is {said(size)}; the import limit is {said(settings.IMPORT_MAX_BYTES)} (IMPORT_MAX_BYTES).",
        code="file_too_large",
        status_code=status.HTTP_413_REQUEST_ENTITY_TOO_LARGE,
    )


def _import_times(conversation: ImportedConversation) -> list:
    """Return each message's time: its own where given, kept in branch order (1 µs apart at least)."""
    previous = conversation.created_at or timezone.now()
    times = []
    for message in conversation.messages:
        when = message.created_at or previous
        if times and when <= previous:
            when = previous + timedelta(microseconds=1)
        times.append(when)
        previous = when
    return times


def _import_conversation(*, job: ImportJob, source: str, imported: ImportedConversation) -> dict:
    """Write ``imported`` as a conversation of the job's owner; return its report entry.

    Call inside the transaction that also records the entry in the job, so a conversation is
    written with its report line or not at all.
    """
    entry = {"title": imported.title or "(untitled)", "messages": len(imported.messages), "conversation": None}
    limit = settings.IMPORT_MAX_MESSAGES
    reason = imported.skip_reason
    if not reason and not imported.messages:
        reason = "No text messages (only system, tool, hidden or non-text content, or none at all)."
    if not reason and len(imported.messages) > limit:
        reason = f"{len(imported.messages):,} messages; the limit is {limit:,} (IMPORT_MAX_MESSAGES)."
    if not reason and imported.original_id:
        already = Conversation.objects.filter(owner_id=job.owner_id, metadata__original_id=imported.original_id)
        if source == "parley":
            already = already | Conversation.objects.filter(
                owner_id=job.owner_id, pk=_uuid_or_none(imported.original_id)
            )
        if already.exists():
            reason = "Already imported (or already yours)."
    if reason:
        return {**entry, "status": "skipped", "reason": reason}
    times = _import_times(imported)
    title = (imported.title or imported.messages[0].content).strip()[:200]
    conversation = Conversation.objects.create(
        owner_id=job.owner_id,
        title=title,
        metadata={"imported_from": source, "original_id": imported.original_id, "import_job": str(job.pk)},
    )
    messages = Message.objects.bulk_create(
        _chained(
            Message(
                conversation=conversation,
                role=m.role,
                content=m.content,
                status=m.status,
                model_slug=m.model,
                error=m.error,
                finished_at=when if m.role == Role.ASSISTANT else None,
            )
            for m, when in zip(imported.messages, times, strict=True)
        )
    )
    # created_at is auto_now_add, set by create(); bulk_update writes the original times as given.
    for message, when in zip(messages, times, strict=True):
        message.created_at = when
    Message.objects.bulk_update(messages, ["created_at"], batch_size=1000)
    Conversation.objects.filter(pk=conversation.pk).update(
        created_at=imported.created_at or times[0],
        updated_at=max(imported.updated_at or times[-1], times[-1]),
        active_leaf=messages[-1],
    )
    reason = f"{imported.dropped} system, hidden, tool, empty or non-text parts left out." if imported.dropped else ""
    return {**entry, "status": "imported", "reason": reason, "conversation": str(conversation.pk)}


def _chained(messages) -> list[Message]:
    """Return ``messages`` (unsaved, in order) as one branch: each one's parent is the one before."""
    chain = list(messages)
    for parent, message in zip([None, *chain], chain, strict=False):
        message.parent = parent
    return chain


def _uuid_or_none(value: str):
    try:
        return uuid.UUID(value)
    except (ValueError, TypeError):
        return None


def import_job_run(*, job_id) -> ImportJob | None:
    """Import the conversations of job ``job_id``'s file; return the job, ``done`` or ``failed``.

    Idempotent (Celery's ``acks_late`` may run it twice): a finished job is left as it is, and a job
    interrupted mid-way resumes after the last conversation its report lists. Each conversation is
    written in its own transaction, with its report entry and the counts, so nothing is
    half-written. A file that is not an export (not JSON, not UTF-8, another shape, a damaged zip)
    fails the job with the reason in ``error``. The file is dropped from the job once it ends.
    Return None when there is no such job.
    """
    job = ImportJob.objects.filter(pk=job_id).first()
    if job is None or job.status in (ImportStatus.DONE, ImportStatus.FAILED):
        return job
    ImportJob.objects.filter(pk=job.pk).update(status=ImportStatus.RUNNING, started_at=job.started_at or timezone.now())
    try:
        source, raws = export_parse(data=bytes(job.data or b""), max_bytes=settings.IMPORT_MAX_BYTES)
    except ImportFileError as exc:
        return _import_job_end(job_id=job.pk, status=ImportStatus.FAILED, error=str(exc))
    ImportJob.objects.filter(pk=job.pk).update(source=source, total=len(raws))
    try:
        for index, raw in enumerate(raws):
            with transaction.atomic():
                # The row lock makes a second run of this job (a redelivery) wait, then skip what
                # the first one wrote.
                written = (
                    ImportJob.objects.select_for_update()
                    .annotate(written=Func(F("report"), function="jsonb_array_length", output_field=IntegerField()))
                    .values_list("written", flat=True)
                    .get(pk=job.pk)
                )
                if index < written:
                    continue
                entry = _import_conversation(job=job, source=source, imported=conversation_read(source=source, raw=raw))
                counter = "imported" if entry["status"] == "imported" else "skipped"
                # Appended in SQL (jsonb ||): the report is not rewritten for each conversation.
                ImportJob.objects.filter(pk=job.pk).update(
                    report=CombinedExpression(F("report"), "||", Value([entry], output_field=JSONField())),
                    **{counter: F(counter) + 1},
                )
            raws[index] = None  # let the parsed conversation go
    except Exception:
        logger.exception("Import job %s failed", job_id)
        return _import_job_end(
            job_id=job.pk,
            status=ImportStatus.FAILED,
            error="The import stopped on an unexpected error; the conversations its report lists were kept.",
        )
    return _import_job_end(job_id=job.pk, status=ImportStatus.DONE)


def _import_job_end(*, job_id, status: str, error: str = "") -> ImportJob:
    ImportJob.objects.filter(pk=job_id).update(status=status, error=error, data=None, finished_at=timezone.now())
    return ImportJob.objects.defer("data").get(pk=job_id)


def _check_no_generation(conversation: Conversation) -> None:
    """Raise ``generation_in_progress`` (409) if ``conversation`` has a live generation.

    Answers orphaned by a dead process are finalised on the way (see
    :func:`conversation_orphans_finalize`), so they never block the conversation. Call while holding
    the conversation's row lock, so two writers cannot both pass.
    """
    conversation_orphans_finalize(conversation=conversation)
    if generation_active(conversation=conversation):
        raise ParleyError(
            "An answer is still being generated in this conversation; stop it or wait.",
            code="generation_in_progress",
            status_code=status.HTTP_409_CONFLICT,
        )


def _turn_model(
    *, conversation: Conversation, model_slug: str | None, params: dict | None, api_key: APIKey | None = None
) -> tuple[ModelConfig, GenerationParams]:
    """Return the model for a turn (``model_slug``, else the conversation's, else the default) and its params.

    Only a model the conversation's owner may use (:func:`accounts.access.visible_to`), and that
    ``api_key`` (the key the request came with, if any) allows: another is ``model_unavailable``,
    as a missing one.
    """
    if not model_slug and conversation.model_id and conversation.model.is_enabled:
        model_slug = conversation.model.slug
    model = model_config_get(slug=model_slug, user=conversation.owner, api_key=api_key)
    return model, generation_params(model=model, overrides=params)


def message_validate(*, content: str, images: int = 0) -> str:
    """Return ``content`` stripped of surrounding whitespace.

    Raise :class:`ParleyError` ``empty_message`` (400) when nothing is left and no image comes with
    it (``images``), or ``message_too_long`` (413) when it is longer than ``CHAT_MAX_MESSAGE_CHARS``
    characters (default 32,000).
    """
    content = (content or "").strip()
    if not content and not images:
        raise ParleyError("The message is empty.", code="empty_message")
    limit = settings.CHAT_MAX_MESSAGE_CHARS
    if len(content) > limit:
        raise ParleyError(
            f"The message is {len(content):,} characters long; the limit is {limit:,}.",
            code="message_too_long",
            status_code=status.HTTP_413_REQUEST_ENTITY_TOO_LARGE,
        )
    return content


@dataclass
class Turn:
    """What a sent message starts: the stored user message, its assistant placeholder, the model
    and the sampling parameters."""

    user_message: Message
    assistant_message: Message
    model: ModelConfig
    params: GenerationParams
    admission: Admission  # the generation slot and quota reservation taken for it (accounts.metering)
    use_cache: bool = True  # False: the request asked to bypass the response caches
    started: float = field(default_factory=time.perf_counter)  # when the turn began: TTFT counts from here


@contextmanager
def _admitted(
    *, conversation: Conversation, model: ModelConfig, params: GenerationParams, content: str = "", images: int = 0
) -> Iterator[Admission]:
    """Admit a generation for the conversation's owner (slot, quota and budget reservations) and yield it.

    The budgets reserve the turn's maximum cost: the conversation so far plus ``content`` (the new
    message) and the system prompt as its prompt, with ``images`` (of the whole conversation) at
    :data:`~inference.providers.IMAGE_PROMPT_TOKENS` each, ``max_tokens`` as its answer
    (:func:`inference.services.cost_estimate`).

    Its ``generation_id`` is the new assistant message's id; the turn finishes it
    (:meth:`~accounts.metering.Admission.finish`). If the block fails (nothing stored), the slot is
    freed at once.
    """
    # Read afresh: a long-lived socket's conversation may hold an owner from before a quota change.
    owner = User.objects.get(pk=conversation.owner_id)
    reserve_cost = Decimal(0)
    if model.price_input_per_mtok or model.price_output_per_mtok:
        history = Message.objects.filter(conversation_id=conversation.pk).aggregate(chars=Sum(Length("content")))
        prompt_chars = (history["chars"] or 0) + len(content) + len(model.system_prompt or "")
        prompt_chars += images * IMAGE_PROMPT_TOKENS * CHARS_PER_TOKEN
        reserve_cost = cost_estimate(model=model, prompt_chars=prompt_chars, max_tokens=params.max_tokens)
    admission = Admission.admit(
        user=owner,
        generation_id=str(uuid.uuid4()),
        reserve_tokens=params.max_tokens,
        source=UsageSource.CHAT,
        reserve_cost=reserve_cost,
    )
    try:
        yield admission
    except BaseException:
        admission.release()
        raise


def message_send(
    *,
    conversation: Conversation,
    content: str,
    client_id: str = "",
    model_slug: str | None = None,
    params: dict | None = None,
    cache: bool = True,
    attachments: list | None = None,
    images: list[tuple[bytes, str]] | None = None,
    api_key: APIKey | None = None,
) -> Turn:
    """Store the user's message and a ``streaming`` assistant placeholder, in one transaction.

    Runs before any model work, so nothing the user typed is lost if generation fails. The message
    follows the conversation's active leaf (a send never starts a branch), and the placeholder
    becomes the new active leaf. The model is ``model_slug``, else the conversation's, else the
    default. ``attachments`` are ids of images the owner uploaded (:func:`attachment_create`) and
    has not attached yet; ``images`` are more, as ``(bytes, file name)``, stored here (after every
    check that needs no image, and removed again if the message is refused). They become the
    message's, and go to the model with it on this turn and every later one. Raise
    :class:`ParleyError`: the image errors of :func:`attachment_create`, ``empty_message`` /
    ``message_too_long`` (see :func:`message_validate`; a message with images may have no text),
    ``too_many_images`` (400, over ``IMAGE_MAX_PER_MESSAGE``), ``invalid_attachment`` (400: not the
    owner's, already sent, or unknown), ``model_not_vision_capable`` (400) when the model cannot
    read the images of the message or of the conversation so far and refuses them (its
    ``text_only_images``), ``generation_in_progress`` (409) when an answer is still being generated
    in this conversation, ``model_unavailable`` when no enabled model matches, ``invalid_params``
    for bad ``params`` (see :func:`inference.services.generation_params`), and before storing
    anything, 429 ``too_many_generations`` / ``quota_exceeded`` / ``budget_exceeded`` (see
    :class:`accounts.metering.Admission`). The generation slot taken here is freed by
    :func:`message_finalize`.
    """
    return _question_turn(
        conversation=conversation,
        content=content,
        client_id=client_id,
        model_slug=model_slug,
        params=params,
        cache=cache,
        attachments=attachments,
        images=images,
        api_key=api_key,
    )


def message_edit(
    *,
    conversation: Conversation,
    message: Message,
    content: str,
    client_id: str = "",
    model_slug: str | None = None,
    params: dict | None = None,
    cache: bool = True,
    attachments: list | None = None,
    images: list[tuple[bytes, str]] | None = None,
    api_key: APIKey | None = None,
) -> Turn:
    """Ask the user's ``message`` again with ``content``: a new question beside it, and its answer's turn.

    The edited message and everything after it are kept, on their own branch: the new question is
    a sibling of ``message`` (same parent), and the new ``streaming`` answer under it becomes the
    active leaf. Stored as :func:`message_send` stores (``attachments`` and ``images`` as there: the
    edited message's own images stay with it), in one transaction before any model work; run the
    returned turn with :func:`chat.turns.turn_start` or :func:`chat.turns.turn_execute`. Raise
    :class:`ParleyError` ``not_editable`` (400) when ``message`` is not a user message, and what
    :func:`message_send` raises.
    """
    if message.role != Role.USER:
        raise ParleyError("Only your own messages can be edited; regenerate an answer instead.", code="not_editable")
    return _question_turn(
        conversation=conversation,
        content=content,
        client_id=client_id,
        model_slug=model_slug,
        params=params,
        cache=cache,
        attachments=attachments,
        images=images,
        api_key=api_key,
        edited=message,
    )


def _question_turn(
    *,
    conversation: Conversation,
    content: str,
    client_id: str,
    model_slug: str | None,
    params: dict | None,
    cache: bool,
    attachments: list | None,
    images: list[tuple[bytes, str]] | None,
    api_key: APIKey | None = None,
    edited: Message | None = None,
) -> Turn:
    """Store a question and its ``streaming`` answer (see :func:`message_send`); return the turn.

    The question follows the active leaf, or, when it replaces ``edited``, ``edited``'s parent.
    """
    attachment_ids = list(dict.fromkeys(str(pk) for pk in attachments or ()))
    if len(attachment_ids) + len(images or ()) > settings.IMAGE_MAX_PER_MESSAGE:
        raise ParleyError(
            f"A message may hold {settings.IMAGE_MAX_PER_MESSAGE} images at most (IMAGE_MAX_PER_MESSAGE).",
            code="too_many_images",
        )
    content = message_validate(content=content, images=len(attachment_ids) + len(images or ()))
    model, generation = _turn_model(conversation=conversation, model_slug=model_slug, params=params, api_key=api_key)
    count = len(attachment_ids) + len(images or ()) + _conversation_images(conversation)
    vision_check(config=model, images=count)
    stored = []
    try:
        for data, filename in images or ():
            stored.append(str(attachment_create(owner=conversation.owner, data=data, filename=filename).pk))
        return _message_store(
            conversation=conversation,
            content=content,
            client_id=client_id,
            model=model,
            generation=generation,
            cache=cache,
            attachment_ids=attachment_ids + stored,
            images=count,
            edited=edited,
        )
    except BaseException:
        attachments_discard(owner=conversation.owner, ids=stored)
        raise


def _message_store(
    *,
    conversation: Conversation,
    content: str,
    client_id: str,
    model: ModelConfig,
    generation: GenerationParams,
    cache: bool,
    attachment_ids: list[str],
    images: int,
    edited: Message | None,
) -> Turn:
    """Admit the turn and store its messages: the second half of :func:`_question_turn`, after its checks."""
    with _admitted(
        conversation=conversation, model=model, params=generation, content=content, images=images
    ) as admission:
        with transaction.atomic():
            # Lock the conversation so two sends cannot both pass the in-progress check.
            locked = Conversation.objects.select_for_update().get(pk=conversation.pk)
            _check_no_generation(locked)
            user_message = Message.objects.create(
                conversation=locked,
                role=Role.USER,
                content=content,
                client_id=client_id[:64],
                parent_id=edited.parent_id if edited is not None else locked.active_leaf_id,
            )
            if attachment_ids:
                _attach(message=user_message, owner_id=locked.owner_id, ids=attachment_ids)
            assistant_message = Message.objects.create(
                id=admission.generation_id,
                conversation=locked,
                role=Role.ASSISTANT,
                status=MessageStatus.STREAMING,
                model_slug=model.slug,
                parent=user_message,
            )
            locked.active_leaf = assistant_message
            update_fields = ["updated_at", "active_leaf"]
            if not locked.title:
                locked.title = " ".join(content.split())[:TITLE_LENGTH] or "Image"
                update_fields.append("title")
            if locked.model_id != model.pk:
                locked.model = model
                update_fields.append("model")
            locked.save(update_fields=update_fields)
    conversation.title, conversation.model = locked.title, locked.model
    conversation.active_leaf_id = locked.active_leaf_id
    prefetch_related_objects([user_message], "attachments")  # serialized on the event loop: no query there
    return Turn(
        user_message=user_message,
        assistant_message=assistant_message,
        model=model,
        params=generation,
        admission=admission,
        use_cache=cache,
    )


def conversation_switch_branch(*, conversation: Conversation, message: Message) -> Message:
    """Show the branch through ``message`` (one of ``conversation``'s, e.g. a sibling picked with "‹ 2 / 3 ›").

    The active path becomes the newest message under ``message`` (itself, if nothing follows it)
    and that message's ancestors; the next message sent follows it. Nothing is created or
    deleted, and ``updated_at`` does not change. Return the new active leaf. Raise
    :class:`ParleyError` ``generation_in_progress`` (409) while an answer is being generated.
    """
    with transaction.atomic():
        locked = Conversation.objects.select_for_update().get(pk=conversation.pk)
        _check_no_generation(locked)
        leaf = message_leaf_latest(message=message)
        if locked.active_leaf_id != leaf.pk:
            locked.active_leaf = leaf
            locked.save(update_fields=["active_leaf"])
    conversation.active_leaf_id = leaf.pk
    return leaf


def _attach(*, message: Message, owner_id: int, ids: list[str]) -> None:
    """Attach the owner's unattached images ``ids`` to ``message``; raise ``invalid_attachment`` (400) otherwise.

    Call inside the transaction that stores ``message``: the rows are locked, so one image cannot
    join two messages sent at once.
    """
    try:
        rows = list(Attachment.objects.select_for_update().filter(pk__in=ids, owner_id=owner_id, message__isnull=True))
    except ValidationError:  # not UUIDs
        rows = []
    if len(rows) != len(ids):
        raise ParleyError(
            "An attachment is unknown, not yours, or already sent with another message; upload it again.",
            code="invalid_attachment",
        )
    Attachment.objects.filter(pk__in=[row.pk for row in rows]).update(message=message)


def conversation_start(
    *,
    owner: User,
    content: str,
    client_id: str = "",
    model_slug: str | None = None,
    params: dict | None = None,
    cache: bool = True,
    attachments: list | None = None,
) -> Turn:
    """Create a conversation of ``owner`` with ``content`` as its first message; return that message's turn.

    The conversation never exists without its message: it is created and the message and its
    ``streaming`` answer stored (see :func:`message_send`) in one transaction, so an error stores
    nothing. The model is ``model_slug``, else the default; it becomes the conversation's model,
    and the title comes from the message; ``attachments`` are image ids, as for :func:`message_send`.
    Run the turn with :func:`chat.turns.turn_start`. Raise
    what :func:`message_send` raises (``empty_message`` 400, ``message_too_long`` 413,
    ``model_unavailable``, ``invalid_params``, ``too_many_generations`` / ``quota_exceeded`` / ``budget_exceeded`` 429).
    """
    turn = None
    try:
        with transaction.atomic():
            conversation = conversation_create(owner=owner)
            turn = message_send(
                conversation=conversation,
                content=content,
                client_id=client_id,
                model_slug=model_slug,
                params=params,
                cache=cache,
                attachments=attachments,
            )
    except BaseException:
        if turn is not None:  # the commit failed: nothing is stored, so free the generation slot now
            turn.admission.release()
        raise
    return turn


def message_regenerate(
    *,
    conversation: Conversation,
    message: Message,
    model_slug: str | None = None,
    params: dict | None = None,
    cache: bool = False,
    api_key: APIKey | None = None,
) -> Turn:
    """Start a new answer to the question that ``message`` answered, beside ``message``.

    ``message`` is any assistant answer of the conversation that follows a user message, on the
    shown branch or not; it may be complete, failed or stopped. It is kept (with its feedback and
    whatever followed it) on its own branch: the new ``streaming`` answer is its sibling and
    becomes the active leaf, so the model's history is the question and what preceded it.
    ``cache`` is off by default: asking again means wanting a fresh generation, not the cached copy
    of the answer being replaced. Run the returned turn with :func:`chat.turns.turn_run`. Raise
    :class:`ParleyError`: ``generation_in_progress`` (409), ``not_regenerable`` (400) when
    ``message`` is not an answer to a question, ``model_not_vision_capable`` (400) for a model that
    refuses the conversation's images, and those of model and params (see
    :func:`message_send`), ``too_many_generations`` / ``quota_exceeded`` / ``budget_exceeded`` (429)
    before anything changes.
    """
    model, generation = _turn_model(conversation=conversation, model_slug=model_slug, params=params, api_key=api_key)
    vision_check(config=model, images=_conversation_images(conversation))
    with _admitted(conversation=conversation, model=model, params=generation) as admission, transaction.atomic():
        locked = Conversation.objects.select_for_update().get(pk=conversation.pk)
        _check_no_generation(locked)
        question = Message.objects.filter(pk=message.parent_id, conversation=locked).first()
        if message.role != Role.ASSISTANT or question is None or question.role != Role.USER:
            raise ParleyError("Only an answer to a question can be regenerated.", code="not_regenerable")
        assistant_message = Message.objects.create(
            id=admission.generation_id,
            conversation=locked,
            role=Role.ASSISTANT,
            status=MessageStatus.STREAMING,
            model_slug=model.slug,
            parent=question,
        )
        locked.active_leaf = assistant_message
        update_fields = ["updated_at", "active_leaf"]
        if locked.model_id != model.pk:
            locked.model = model
            update_fields.append("model")
        locked.save(update_fields=update_fields)
    conversation.model = locked.model
    conversation.active_leaf_id = locked.active_leaf_id
    return Turn(
        user_message=question,
        assistant_message=assistant_message,
        model=model,
        params=generation,
        admission=admission,
        use_cache=cache,
    )


def turn_load(*, message_id, params: dict, use_cache: bool = True) -> Turn | None:
    """Rebuild the :class:`Turn` that assistant message ``message_id`` answers, in another process.

    ``params`` is ``dataclasses.asdict`` of its :class:`GenerationParams`. Return None when the
    message is gone or already finalised (nothing left to generate). Raise :class:`ParleyError`
    ``model_unavailable`` when its model was disabled meanwhile.
    """
    answer = (
        Message.objects.select_related("conversation__owner")
        .filter(pk=message_id, role=Role.ASSISTANT, status__in=[MessageStatus.PENDING, MessageStatus.STREAMING])
        .first()
    )
    if answer is None:
        return None
    question = Message.objects.filter(pk=answer.parent_id).first()
    return Turn(
        user_message=question,
        assistant_message=answer,
        model=model_config_get(slug=answer.model_slug),
        params=GenerationParams(**params),
        admission=Admission(user=answer.conversation.owner, generation_id=str(answer.pk), source=UsageSource.CHAT),
        use_cache=use_cache,
    )


FEEDBACK_COMMENT_LENGTH = 2000  # characters


def feedback_set(*, message: Message, user: User, rating: Rating | str, comment: str = "") -> tuple[Feedback, bool]:
    """Record ``user``'s rating (``up``/``down``) and comment on the assistant ``message``.

    One feedback per user and message: posting again replaces the rating and the comment. Return
    ``(feedback, created)``; a new feedback emits ``feedback.created`` (:mod:`core.events`). Raise
    :class:`ParleyError` ``not_an_answer`` (400) for a message that is not an assistant answer,
    ``invalid`` (400) for an unknown rating or a comment longer than :data:`FEEDBACK_COMMENT_LENGTH`
    characters.
    """
    if message.role != Role.ASSISTANT:
        raise ParleyError("Feedback can only be given on assistant answers.", code="not_an_answer")
    if rating not in Rating.values:
        raise ParleyError(f"The rating must be one of {', '.join(Rating.values)}.", code="invalid")
    comment = comment.strip()
    if len(comment) > FEEDBACK_COMMENT_LENGTH:
        raise ParleyError(f"The comment is limited to {FEEDBACK_COMMENT_LENGTH:,} characters.", code="invalid")
    with transaction.atomic():
        feedback, created = Feedback.objects.update_or_create(
            message=message, user=user, defaults={"rating": rating, "comment": comment}
        )
        if created:  # README, "Webhooks": a changed rating is not announced again
            event_emit("feedback.created", _feedback_event_data(feedback, message=message))
    return feedback, created


def _feedback_event_data(feedback: Feedback, *, message: Message) -> dict:
    return {
        "feedback_id": str(feedback.pk),
        "message_id": str(message.pk),
        "conversation_id": str(message.conversation_id),
        "user_id": feedback.user_id,
        "rating": feedback.rating,
        "comment": feedback.comment,
        "model": message.model_slug,
    }


def message_finalize(
    *,
    message_id,
    content: str,
    status: MessageStatus,
    prompt_tokens: int | None = None,
    completion_tokens: int | None = None,
    ttft_ms: int | None = None,
    latency_ms: int | None = None,
    tokens_per_s: float | None = None,
    cost: Decimal | None = None,
    cached: bool = False,
    error: str = "",
    metadata: dict | None = None,
    citations: list[dict] | None = None,
) -> Message:
    """Finish an assistant message: its text (partial on error or stop), status, usage and timings.

    ``ttft_ms`` and ``latency_ms`` are milliseconds from the start of the turn to the first token
    and to the end; ``tokens_per_s`` completion tokens per second; ``cost`` USD. ``metadata`` is
    merged into the message's metadata. ``citations`` (the knowledge-base passages the answer drew
    on: ``[{document_id, title, chunk_id, similarity}]``) replace the message's when given. Return the
    stored message.
    """
    message = Message.objects.select_related("conversation").get(pk=message_id)
    message.content = content
    message.status = status
    message.prompt_tokens = prompt_tokens
    message.completion_tokens = completion_tokens
    message.ttft_ms = ttft_ms
    message.latency_ms = latency_ms
    message.tokens_per_s = tokens_per_s
    message.cost = cost
    message.cached = cached
    message.error = error
    message.metadata = {**message.metadata, **(metadata or {})}
    if citations is not None:
        message.citations = citations
    message.finished_at = timezone.now()
    message.save(
        update_fields=[
            "content",
            "status",
            "prompt_tokens",
            "completion_tokens",
            "ttft_ms",
            "latency_ms",
            "tokens_per_s",
            "cost",
            "cached",
            "error",
            "metadata",
            "citations",
            "finished_at",
        ]
    )
    # The generation is over: free its slot and quota reservation (taken by message_send/regenerate),
    # whoever finalises it (the turn's Admission.finish frees it too; freeing twice is harmless).
    generation_release(user_id=message.conversation.owner_id, generation_id=str(message.pk))
    return message


def turn_abandon(*, message_id, error: str) -> None:
    """End an answer that cannot be generated (its model was disabled meanwhile): ``error``, slot and
    budget reservations freed (nothing was generated, so nothing is charged)."""
    message_finalize(message_id=message_id, content="", status=MessageStatus.ERROR, error=error)
    budget_release(generation_id=str(message_id))


def message_partial_save(*, message_id, content: str) -> bool:
    """Store the text so far of an answer still ``streaming`` (for clients that reconnect midway).

    Never touches a finalised message, so a late save cannot undo :func:`message_finalize`.
    Return whether the message was updated.
    """
    return bool(Message.objects.filter(pk=message_id, status=MessageStatus.STREAMING).update(content=content))


INTERRUPTED = "The server stopped while this answer was being generated."
ORPHANS_PER_SWEEP = 500  # answers looked at per run of orphans_finalize_lapsed: bounds one run's work


def message_finalize_orphans(*, older_than: timedelta) -> int:
    """Finalise assistant messages left ``pending``/``streaming`` by a process that died mid-generation.

    Only messages created more than ``older_than`` ago are touched, so a live generation on another
    node is left alone (``timedelta(0)`` when no other process can be generating, as at a local start).
    They end ``error`` with their partial text and the reason. Return how many were finalised.
    """
    cutoff = timezone.now() - older_than
    return Message.objects.filter(
        role=Role.ASSISTANT, status__in=[MessageStatus.PENDING, MessageStatus.STREAMING], created_at__lt=cutoff
    ).update(status=MessageStatus.ERROR, error=INTERRUPTED, finished_at=timezone.now())


def _orphan_finalize(*, message_id, owner_id: int) -> bool:
    """End one orphaned answer ``error`` (:data:`INTERRUPTED`), partial text kept; return whether it changed.

    Its generation is released, so a process that was only stalled, not dead, stops renewing it; if
    that process finishes after all, its final save still stores the whole answer.
    """
    updated = Message.objects.filter(pk=message_id, status__in=[MessageStatus.PENDING, MessageStatus.STREAMING]).update(
        status=MessageStatus.ERROR, error=INTERRUPTED, finished_at=timezone.now()
    )
    generation_release(user_id=owner_id, generation_id=str(message_id))
    budget_release(generation_id=str(message_id))  # else held until it lapses (accounts.budgets.HOLD_SECONDS)
    return bool(updated)


def conversation_orphans_finalize(*, conversation: Conversation) -> list[Message]:
    """Finalise the answers of ``conversation`` whose generation is no longer running anywhere.

    An answer is orphaned when its generation lease has expired (:func:`chat.selectors.generation_running`:
    not while Redis is unreachable, nor in its first seconds). Called where a user meets the
    conversation (its page, its message list, send, regenerate, delete, stop), so an orphan never
    shows as running nor blocks the conversation, with or without Celery beat. Return the answers
    finalised here, as stored now.
    """
    ended = [
        message.pk
        for message in generations_unfinished(conversation=conversation)
        if not generation_running(message=message, owner_id=conversation.owner_id)
        and _orphan_finalize(message_id=message.pk, owner_id=conversation.owner_id)
    ]
    return list(Message.objects.filter(pk__in=ended).order_by("created_at")) if ended else []


def orphans_finalize_lapsed(*, confirm_seconds: float | None = None) -> int:
    """Finalise answers, in every conversation, whose generation lease has lapsed for good (Celery beat).

    A candidate is any ``pending``/``streaming`` answer older than
    ``GENERATION_ORPHAN_GRACE_SECONDS``; it is finalised once its lease has been seen missing on two
    runs ``confirm_seconds`` apart (default ``GENERATION_ORPHAN_CONFIRM_SECONDS``; see
    :func:`accounts.quotas.generations_lapsed`), so a lease lost to a Redis restart, which a live
    turn takes again, is not mistaken for a dead process. With Redis down, nothing is done. At most
    :data:`ORPHANS_PER_SWEEP` answers, oldest first, per call. Return how many were finalised.
    """
    if confirm_seconds is None:
        confirm_seconds = settings.GENERATION_ORPHAN_CONFIRM_SECONDS
    candidates = list(
        Message.objects.filter(
            role=Role.ASSISTANT,
            status__in=[MessageStatus.PENDING, MessageStatus.STREAMING],
            created_at__lt=timezone.now() - orphan_grace(),
        )
        .order_by("created_at")
        .values_list("pk", "conversation__owner_id")[:ORPHANS_PER_SWEEP]
    )
    owners = {str(pk): owner_id for pk, owner_id in candidates}
    lapsed = generations_lapsed(
        generations=[(owner_id, str(pk)) for pk, owner_id in candidates], confirm_seconds=confirm_seconds
    )
    if not lapsed:
        return 0
    return sum(_orphan_finalize(message_id=gid, owner_id=owners[gid]) for gid in lapsed)


SHARE_TOKEN_BYTES = 24  # secrets.token_urlsafe(24): 32 URL-safe characters, 192 random bits
SHARE_MAX_DAYS = 365  # the longest expiry a link may be given, in days


def share_snapshot(*, conversation: Conversation) -> list[dict]:
    """Return what a share link of ``conversation`` shows: its questions and finished answers, oldest first.

    Shape (``SharedConversation.snapshot_version`` 1): ``[{"role", "content", "model", "created_at"}]``,
    ``created_at`` in ISO 8601. The history a model sees (:func:`chat.selectors.model_messages`):
    the branch shown now (the active path) only, no failed answer, none being generated, no empty
    message.
    """
    rows = message_list(conversation=conversation).filter(
        role__in=[Role.USER, Role.ASSISTANT], status__in=[MessageStatus.COMPLETE, MessageStatus.CANCELLED]
    )
    return [
        {"role": m.role, "content": m.content, "model": m.model_slug, "created_at": m.created_at.isoformat()}
        for m in rows
        if m.content
    ]


def share_create(*, conversation: Conversation, expires_in_days: int | None = None) -> SharedConversation:
    """Create a read-only link of ``conversation``'s owner to a snapshot of it as it is now.

    ``expires_in_days`` (1 to :data:`SHARE_MAX_DAYS`; ``None``: never) sets ``expires_at``. The token
    is ``secrets.token_urlsafe`` (:data:`SHARE_TOKEN_BYTES` random bytes). Recorded as a
    ``share.create`` audit event. Raise :class:`ParleyError` ``nothing_to_share`` (400) when the
    conversation has no finished message yet, ``invalid`` (400) for an expiry out of range.
    """
    if expires_in_days is not None and not 1 <= expires_in_days <= SHARE_MAX_DAYS:
        raise ParleyError(f"expires_in_days must be between 1 and {SHARE_MAX_DAYS}.", code="invalid")
    snapshot = share_snapshot(conversation=conversation)
    if not snapshot:
        raise ParleyError("This conversation has no finished message to share yet.", code="nothing_to_share")
    now = timezone.now()
    with transaction.atomic():
        share = SharedConversation.objects.create(
            token=secrets.token_urlsafe(SHARE_TOKEN_BYTES),
            owner_id=conversation.owner_id,
            conversation=conversation,
            title=conversation.title or str(conversation),
            messages=snapshot,
            expires_at=now + timedelta(days=expires_in_days) if expires_in_days else None,
        )
        audit_record(
            action="share.create",
            target=share,
            changes={
                "conversation": str(conversation.pk),
                "messages": len(snapshot),
                "expires_at": share.expires_at.isoformat() if share.expires_at else None,
            },
        )
    return share


def share_revoke(*, share: SharedConversation) -> SharedConversation:
    """Revoke ``share``: its link answers 404 from now on. Return it.

    Revoking again changes nothing (the first ``revoked_at`` stays, no second audit event); the
    first time is a ``share.revoke`` audit event.
    """
    with transaction.atomic():
        locked = SharedConversation.objects.select_for_update().get(pk=share.pk)
        if locked.revoked_at is None:
            locked.revoked_at = timezone.now()
            locked.save(update_fields=["revoked_at"])
            audit_record(action="share.revoke", target=locked, changes={"owner": locked.owner.get_username()})
    share.revoked_at = locked.revoked_at
    return share


def share_continue(*, share: SharedConversation, user: User) -> Conversation:
    """Copy the snapshot of ``share`` into a new conversation of ``user`` ("continue this chat"); return it.

    The new conversation has the share's title and its messages (role, content, model), in order,
    as finished messages; the visitor's next message continues from them. Nothing of the original
    conversation is linked or changed.
    """
    with transaction.atomic():
        conversation = conversation_create(owner=user, title=share.title)
        rows = Message.objects.bulk_create(
            _chained(
                Message(
                    conversation=conversation,
                    role=item["role"],
                    content=item["content"],
                    model_slug=item.get("model", "")[:64],
                    status=MessageStatus.COMPLETE,
                    metadata={"copied_from_share": str(share.pk)},
                )
                for item in share.messages
                if item.get("role") in (Role.USER, Role.ASSISTANT)
            )
        )
        # created_at is the list's order; a bulk insert may give rows the same microsecond.
        start = timezone.now()
        for index, row in enumerate(rows):
            row.created_at = start + timedelta(microseconds=index)
        Message.objects.bulk_update(rows, ["created_at"])
        if rows:
            conversation.active_leaf = rows[-1]
            conversation.save(update_fields=["active_leaf"])
    return conversation


PROMPT_TEXT_MAX_CHARS = 20_000  # characters of a library prompt's text


def _prompt_groups(*, owner: User, visibility: str, groups: list[Group] | None) -> list[Group]:
    """Return the groups a prompt is shared with; raise ``invalid`` (400) for a group ``owner`` is not in."""
    if visibility != PromptVisibility.GROUPS:
        return []
    groups = list(groups or [])
    if not groups:
        raise ParleyError("Choose at least one of your groups to share the prompt with.", code="invalid")
    mine = set(owner.groups.values_list("pk", flat=True))
    if any(group.pk not in mine for group in groups):
        raise ParleyError("A prompt can be shared only with groups you are in.", code="invalid")
    return groups


def _prompt_clean(*, title: str, text: str) -> tuple[str, str]:
    title, text = title.strip()[:120], text.strip()
    if not title or not text:
        raise ParleyError("A prompt needs a title and a text.", code="invalid")
    if len(text) > PROMPT_TEXT_MAX_CHARS:
        raise ParleyError(f"A prompt's text is at most {PROMPT_TEXT_MAX_CHARS:,} characters.", code="invalid")
    return title, text


@transaction.atomic
def prompt_create(
    *,
    owner: User,
    title: str,
    text: str,
    visibility: str = PromptVisibility.PRIVATE,
    groups: list[Group] | None = None,
) -> Prompt:
    """Add a prompt to ``owner``'s library and return it.

    ``visibility``: ``private`` (default), ``groups`` (with ``groups``, each one ``owner`` is in) or
    ``everyone``. Raise :class:`ParleyError` ``invalid`` (400) for an empty title or text, a text
    over :data:`PROMPT_TEXT_MAX_CHARS` characters, or groups that are missing or not ``owner``'s.
    """
    title, text = _prompt_clean(title=title, text=text)
    shared_with = _prompt_groups(owner=owner, visibility=visibility, groups=groups)
    prompt = Prompt.objects.create(owner=owner, title=title, text=text, visibility=visibility)
    prompt.groups.set(shared_with)
    return prompt


@transaction.atomic
def prompt_update(
    *,
    prompt: Prompt,
    title: str | None = None,
    text: str | None = None,
    visibility: str | None = None,
    groups: list[Group] | None = None,
) -> Prompt:
    """Change ``prompt`` (``None`` leaves a field be) and return it; raise as :func:`prompt_create` does."""
    title, text = _prompt_clean(
        title=prompt.title if title is None else title, text=prompt.text if text is None else text
    )
    visibility = visibility or prompt.visibility
    if groups is None and visibility == PromptVisibility.GROUPS:
        groups = list(prompt.groups.all())
    shared_with = _prompt_groups(owner=prompt.owner, visibility=visibility, groups=groups)
    prompt.title, prompt.text, prompt.visibility = title, text, visibility
    prompt.save(update_fields=["title", "text", "visibility", "updated_at"])
    prompt.groups.set(shared_with)
    return prompt


def prompt_delete(*, prompt: Prompt) -> None:
    """Delete ``prompt`` from its owner's library (and from everyone's list it was shared to)."""
    prompt.delete()


CUSTOM_INSTRUCTIONS_MAX_CHARS = 1_500  # characters of each of "about me" and "how to answer"


def custom_instructions_set(
    *, user: User, about_me: str | None = None, how_to_answer: str | None = None, enabled: bool | None = None
) -> CustomInstructions:
    """Store ``user``'s custom instructions (``None`` leaves a field be) and return them.

    Each text is stripped; raise :class:`ParleyError` ``invalid`` (400) when one is longer than
    :data:`CUSTOM_INSTRUCTIONS_MAX_CHARS` characters. Used from the next turn on (see
    :func:`chat.selectors.custom_instructions_prompt`).
    """
    with transaction.atomic():
        instructions, _ = CustomInstructions.objects.select_for_update().get_or_create(user=user)
        for name, value in (("about_me", about_me), ("how_to_answer", how_to_answer)):
            if value is None:
                continue
            value = value.strip()
            if len(value) > CUSTOM_INSTRUCTIONS_MAX_CHARS:
                raise ParleyError(f"{name}: at most {CUSTOM_INSTRUCTIONS_MAX_CHARS:,} characters.", code="invalid")
            setattr(instructions, name, value)
        if enabled is not None:
            instructions.enabled = enabled
        instructions.save()
    return instructions
