"""Writes for the knowledge base and memory: the only code that creates or changes documents, chunks, memories.

Ingestion (:func:`document_ingest`) is idempotent: the chunks of a document are replaced in one
transaction under the document's row lock, and ``(document, index)`` is unique, so a task that runs
twice (a worker killed before acknowledging it, then the message redelivered) leaves one copy.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable
from pathlib import Path

from asgiref.sync import async_to_sync
from channels.layers import get_channel_layer
from django.conf import settings
from django.core.files.base import ContentFile
from django.db import IntegrityError, transaction
from django.utils import timezone
from rest_framework import status

from accounts.quotas import ingestion_admit
from core.errors import ParleyError
from core.queue import task_enqueue_on_commit
from inference.embeddings import embed_text, embed_texts
from inference.models import ModelConfig
from inference.providers import GenerationParams, InferenceError
from inference.services import provider_for

from .ingestion import ExtractionError, UnsupportedType, chunk_sections, extract_sections, sniff_type
from .models import Chunk, Document, DocumentStatus, DocumentType, Memory, MemoryKind

logger = logging.getLogger(__name__)

EMBED_BATCH = 32  # chunks embedded per call (and per progress event)
MEMORY_TEXT_CHARS = 2000  # of a question/answer pair kept as a memory: MiniLM reads ~256 word pieces anyway


def documents_group(user_id) -> str:
    """Return the channel-layer group that receives ``user_id``'s document progress events."""
    return f"user.{user_id}.documents"


def document_event(*, document: Document, stage: str, done: int = 0, total: int = 0) -> None:
    """Send a progress event about ``document`` to its owner's group; never raises.

    Event (JSON, the ``event`` of a ``{"type": "documents.event"}`` channel-layer message)::

        {"type": "document.progress", "document_id": str, "status": "pending"|"processing"|"ready"|"failed",
         "stage": "queued"|"extract"|"embed"|"store"|"done"|"failed", "done": int, "total": int,
         "chunk_count": int, "failure_reason": str}

    ``done``/``total`` count chunks embedded during the ``embed`` stage.
    """
    event = {
        "type": "document.progress",
        "document_id": str(document.pk),
        "status": document.status,
        "stage": stage,
        "done": done,
        "total": total,
        "chunk_count": document.chunk_count,
        "failure_reason": document.failure_reason,
    }
    try:
        async_to_sync(get_channel_layer().group_send)(
            documents_group(document.owner_id), {"type": "documents.event", "event": event}
        )
    except Exception as exc:  # Redis down: the status in the database is what counts
        logger.warning("Channel layer unavailable (%s); document event not sent", type(exc).__name__)


def document_create(
    *,
    owner,
    data: bytes,
    filename: str,
    title: str = "",
    allow_jsonl: bool = False,
    ingest: bool = True,
    count_quota: bool = True,
) -> Document:
    """Store an uploaded file as ``owner``'s document (``pending``) and queue its ingestion.

    ``data`` is the whole file. Its type is sniffed from the content (see
    :func:`agents.ingestion.sniff_type`); ``allow_jsonl`` (``kb import`` only) also accepts ``.jsonl``
    question/answer files. The file is saved under a generated name in ``MEDIA_ROOT``. ``ingest``
    False leaves the queuing to the caller. The document counts against the owner's
    ``KB_DAILY_DOCUMENTS`` unless ``count_quota`` is False (an operator's ``kb import``). Raise
    :class:`ParleyError`: ``empty_file`` (400), ``file_too_large`` (413, over ``KB_MAX_UPLOAD_MB``
    MiB), ``unsupported_media_type`` (415), ``ingestion_quota_exceeded`` (429, see
    :func:`accounts.quotas.ingestion_admit`).
    """
    limit = settings.KB_MAX_UPLOAD_MB * 1024 * 1024
    if not data:
        raise ParleyError("The file is empty.", code="empty_file")
    if len(data) > limit:
        raise ParleyError(
            f"The file is {len(data) / 1048576:.1f} MiB; the limit is {settings.KB_MAX_UPLOAD_MB} MiB.",
            code="file_too_large",
            status_code=status.HTTP_413_REQUEST_ENTITY_TOO_LARGE,
        )
    filename = Path(filename or "document.txt").name[:255]
    if allow_jsonl and filename.lower().endswith(".jsonl"):
        content_type = DocumentType.JSONL
    else:
        try:
            content_type = sniff_type(head=data[:8192], filename=filename, body=data)
        except UnsupportedType as exc:
            raise ParleyError(
                str(exc), code="unsupported_media_type", status_code=status.HTTP_415_UNSUPPORTED_MEDIA_TYPE
            ) from exc
    if count_quota:
        ingestion_admit(user=owner)
    with transaction.atomic():
        document = Document(
            owner=owner,
            title=(title.strip() or Path(filename).stem or filename)[:200],
            filename=filename,
            content_type=content_type,
            size_bytes=len(data),
            sha256=hashlib.sha256(data).hexdigest(),
        )
        document.file.save(filename, ContentFile(data), save=False)
        try:
            document.save()
        except Exception:
            document.file.delete(save=False)
            raise
        if ingest:
            from .tasks import document_ingest_task  # here: tasks.py imports this module

            task_enqueue_on_commit(document_ingest_task, str(document.pk))
            transaction.on_commit(lambda: document_event(document=document, stage="queued"))
    return document


def document_delete(*, document: Document) -> None:
    """Delete ``document``, its chunks and its stored file."""
    file = document.file
    with transaction.atomic():
        document.delete()
        # The file goes only once the rows are gone for good.
        transaction.on_commit(lambda: file.delete(save=False))


def document_retry(*, document: Document) -> Document:
    """Ingest ``document`` again from its stored file: back to ``pending``, and its ingestion queued."""
    from .tasks import document_ingest_task  # here: tasks.py imports this module

    with transaction.atomic():
        locked = Document.objects.select_for_update().get(pk=document.pk)
        locked.status, locked.failure_reason = DocumentStatus.PENDING, ""
        locked.save(update_fields=["status", "failure_reason", "updated_at"])
        task_enqueue_on_commit(document_ingest_task, str(locked.pk))
    document_event(document=locked, stage="queued")
    return locked


def _fail(document_id, reason: str) -> Document | None:
    with transaction.atomic():
        document = Document.objects.select_for_update().filter(pk=document_id).first()
        if document is None:
            return None
        # A failed document has no chunks: none from an older version of it are ever cited.
        Chunk.objects.filter(document=document).delete()
        document.status, document.failure_reason, document.chunk_count = DocumentStatus.FAILED, reason[:2000], 0
        document.save(update_fields=["status", "failure_reason", "chunk_count", "updated_at"])
    logger.info("Ingestion of document %s failed: %s", document_id, reason)
    document_event(document=document, stage="failed")
    return document


def _still_wanted(document_id) -> bool:
    """Return whether ``document_id`` still exists (a deleted document's ingestion stops at its next checkpoint)."""
    return Document.objects.filter(pk=document_id).exists()


def document_ingest_fail(*, document_id, reason: str) -> Document | None:
    """End ``document_id``'s ingestion ``failed`` with ``reason`` (its chunks removed); None if it is gone."""
    return _fail(document_id, reason)


def document_ingest(*, document_id, on_progress: Callable[[int, int], None] | None = None) -> Document | None:
    """Extract, chunk, embed and store ``document_id``'s passages; return the document (None if deleted).

    Idempotent: a ``ready`` document is left as it is (a redelivered task); otherwise its chunks are
    replaced in one transaction. Ends ``ready`` with ``chunk_count``, or ``failed`` with
    ``failure_reason`` (unreadable file, no text, over ``KB_MAX_DOCUMENT_CHARS`` characters of text
    or ``KB_MAX_DOCUMENT_CHUNKS`` passages, embedding model failure). A document deleted meanwhile
    stops it at the next checkpoint (after extraction, between embedded batches): None. Chunks are
    ``KB_CHUNK_TOKENS`` tokens with ``KB_CHUNK_OVERLAP`` tokens of overlap. Sends progress events (see
    :func:`document_event`); ``on_progress(done, total)`` is also called after each embedded batch.
    Blocking: runs the embedding model.
    """
    with transaction.atomic():
        document = Document.objects.select_for_update().filter(pk=document_id).first()
        if document is None or document.status == DocumentStatus.READY:
            return document
        document.status, document.failure_reason = DocumentStatus.PROCESSING, ""
        document.attempts += 1
        document.save(update_fields=["status", "failure_reason", "attempts", "updated_at"])
    document_event(document=document, stage="extract")
    try:
        with document.file.open("rb") as handle:
            data = handle.read()
        sections = extract_sections(
            data=data, content_type=document.content_type, max_chars=settings.KB_MAX_DOCUMENT_CHARS
        )
    except FileNotFoundError:
        return _fail(document_id, "The stored file is missing; upload it again.")
    except ExtractionError as exc:
        return _fail(document_id, str(exc))
    del data
    if not _still_wanted(document_id):
        return None
    passages = chunk_sections(sections, size=settings.KB_CHUNK_TOKENS, overlap=settings.KB_CHUNK_OVERLAP)
    if settings.KB_MAX_DOCUMENT_CHUNKS and len(passages) > settings.KB_MAX_DOCUMENT_CHUNKS:
        return _fail(
            document_id,
            f"The document makes {len(passages):,} passages; the limit per document is "
            f"{settings.KB_MAX_DOCUMENT_CHUNKS:,}. Split it into smaller files.",
        )
    embeddings: list[list[float]] = []
    try:
        for start in range(0, len(passages), EMBED_BATCH):
            # A checkpoint per batch: a document deleted meanwhile stops its ingestion here.
            if start and not _still_wanted(document_id):
                logger.info("Ingestion of document %s stopped: the document was deleted", document_id)
                return None
            embeddings += embed_texts([p.text for p in passages[start : start + EMBED_BATCH]])
            document_event(document=document, stage="embed", done=len(embeddings), total=len(passages))
            if on_progress is not None:
                on_progress(len(embeddings), len(passages))
    except InferenceError as exc:
        return _fail(document_id, f"The embedding model failed: {exc.detail}")

    with transaction.atomic():
        locked = Document.objects.select_for_update().filter(pk=document_id).first()
        if locked is None:  # deleted while it was being embedded
            return None
        Chunk.objects.filter(document=locked).delete()
        Chunk.objects.bulk_create(
            Chunk(
                document=locked,
                owner_id=locked.owner_id,
                index=index,
                content=passage.text,
                token_count=passage.token_count,
                embedding=embedding,
            )
            for index, (passage, embedding) in enumerate(zip(passages, embeddings, strict=True))
        )
        locked.status, locked.failure_reason = DocumentStatus.READY, ""
        locked.chunk_count, locked.embedding_model = len(passages), settings.EMBEDDING_MODEL
        locked.ingested_at = timezone.now()
        locked.save(
            update_fields=["status", "failure_reason", "chunk_count", "embedding_model", "ingested_at", "updated_at"]
        )
    document_event(document=locked, stage="done", done=len(passages), total=len(passages))
    return locked


KB_IMPORT_SUFFIXES = {".txt", ".text", ".md", ".markdown", ".html", ".htm", ".pdf", ".jsonl"}


def kb_import(*, owner, path: Path, queue: bool = False) -> list[Document]:
    """Import a file, or every supported file under a folder, as ``owner``'s documents.

    ``.jsonl`` files hold ``{"question", "answer"}`` lines, one chunk each. Files are ingested here,
    one after the other, unless ``queue`` (then Celery does it). Unsupported files are skipped;
    a file that fails ends ``failed`` with its reason. Return the documents created.
    """
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
    documents = []
    for file in files:
        if file.suffix.lower() not in KB_IMPORT_SUFFIXES:
            continue
        document = document_create(
            owner=owner,
            data=file.read_bytes(),
            filename=file.name,
            allow_jsonl=True,
            ingest=queue,
            count_quota=False,
        )
        if not queue:
            document = document_ingest(document_id=document.pk) or document
        documents.append(document)
    return documents


def kb_reembed(*, batch_size: int = 64, on_progress: Callable[[str, int], None] | None = None) -> dict:
    """Embed every chunk and memory again with the current ``EMBEDDING_MODEL``; return counts by kind.

    For after the embedding model changes (to a model of the same width: the columns are 384-d).
    ``on_progress(kind, done)`` after each batch.
    """
    counts = {}
    for kind, model in (("chunks", Chunk), ("memories", Memory)):
        done = 0
        last_pk = 0
        while True:
            rows = list(model.objects.filter(pk__gt=last_pk).order_by("pk")[:batch_size])
            if not rows:
                break
            for row, vector in zip(rows, embed_texts([r.content for r in rows]), strict=True):
                row.embedding = vector
            model.objects.bulk_update(rows, ["embedding"])
            done += len(rows)
            last_pk = rows[-1].pk
            if on_progress is not None:
                on_progress(kind, done)
        counts[kind] = done
    Document.objects.filter(status=DocumentStatus.READY).update(embedding_model=settings.EMBEDDING_MODEL)
    return counts


# Memory


def memory_exchange_store(*, owner_id: int, conversation_id, message_id, question: str, answer: str) -> Memory:
    """Store a question and its answer as an embedded ``exchange`` memory of ``owner_id``; return it.

    ``message_id`` is the answer's: one memory per answer (idempotent). The text kept is
    ``"Q: <question>\nA: <answer>"``, cut to ``MEMORY_TEXT_CHARS`` characters. The caller checks that
    the owner has memory on. Blocking: runs the embedding model. Raise :class:`InferenceError` when
    it fails.
    """
    text = f"Q: {question}\nA: {answer}"[:MEMORY_TEXT_CHARS]
    embedding = embed_text(text)
    try:
        with transaction.atomic():
            memory, _ = Memory.objects.update_or_create(
                message_id=message_id,
                kind=MemoryKind.EXCHANGE,
                defaults={
                    "owner_id": owner_id,
                    "conversation_id": conversation_id,
                    "content": text,
                    "embedding": embedding,
                },
            )
    except IntegrityError:  # a concurrent run stored it first
        memory = Memory.objects.get(message_id=message_id, kind=MemoryKind.EXCHANGE)
    return memory


SUMMARY_PROMPT = (
    "Summarise this conversation between a user and an assistant in a few sentences: the topics, the facts "
    "stated and any decisions. Write only the summary."
)
SUMMARY_TRANSCRIPT_CHARS = 6000  # of the newest messages given to the summarising model


def memory_summary_get(*, conversation_id, pairs: int) -> Memory | None:
    """Return the summary memory of ``conversation_id``'s first ``pairs`` pairs, or None if none is stored."""
    return Memory.objects.filter(conversation_id=conversation_id, kind=MemoryKind.SUMMARY, pairs=pairs).first()


def memory_summary_store(
    *, owner_id: int, conversation_id, title: str, pairs: int, messages: list[dict[str, str]], config: ModelConfig
) -> Memory | None:
    """Summarise a conversation with ``config``'s model and store the summary as embedded memory; return it.

    ``messages`` are the conversation's first ``pairs`` question/answer pairs, ``[{"role", "content"}]``
    oldest first, without the system prompt; ``title`` is the conversation's. Idempotent: one summary
    per conversation and ``pairs`` (an existing one is returned). The summary is generated at
    temperature 0 with at most ``AGENTS_SUMMARY_MAX_TOKENS`` tokens from the newest
    ``SUMMARY_TRANSCRIPT_CHARS`` characters of the transcript, then embedded. None when the model
    answers nothing. The caller checks that the owner has memory on. Blocking. Raise
    :class:`InferenceError` when the model fails (the task retries).
    """
    existing = memory_summary_get(conversation_id=conversation_id, pairs=pairs)
    if existing is not None:
        return existing
    transcript = "\n".join(f"{m['role']}: {m['content']}" for m in messages)[-SUMMARY_TRANSCRIPT_CHARS:]
    completion = provider_for(config=config).complete(
        [{"role": "system", "content": SUMMARY_PROMPT}, {"role": "user", "content": transcript}],
        GenerationParams(max_tokens=settings.AGENTS_SUMMARY_MAX_TOKENS, temperature=0.0),
    )
    summary = completion.text.strip()
    if not summary:
        return None
    content = f"Summary of the conversation {title!r}: {summary}"[:MEMORY_TEXT_CHARS]
    try:
        with transaction.atomic():
            return Memory.objects.create(
                owner_id=owner_id,
                conversation_id=conversation_id,
                kind=MemoryKind.SUMMARY,
                pairs=pairs,
                content=content,
                embedding=embed_text(content),
            )
    except IntegrityError:  # a concurrent run stored it first
        return Memory.objects.get(conversation_id=conversation_id, kind=MemoryKind.SUMMARY, pairs=pairs)
