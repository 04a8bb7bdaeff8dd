"""Writes for the knowledge base and memory: the only code that creates or changes documents, chunks, memories.

Ingestion (:func:`document_ingest`) is idempotent: the chunks of a document are replaced in one
transaction under the document's row lock, and ``(document, index)`` is unique, so a task that runs
twice (a worker killed before acknowledging it, then the message redelivered) leaves one copy.
"""

from __future__ import annotations

import hashlib
import logging
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import timedelta
from pathlib import Path

from asgiref.sync import async_to_sync
from channels.layers import get_channel_layer
from django.conf import settings
from django.core.files.base import ContentFile
from django.db import IntegrityError, connections, transaction
from django.db.models import Q
from django.utils import timezone
from rest_framework import status

from accounts.quotas import ingestion_admit
from accounts.services import audit_record
from core.errors import ParleyError
from core.events import event_emit
from core.queue import task_enqueue, task_enqueue_on_commit
from inference.embeddings import embed_text, embed_texts
from inference.models import ModelConfig
from inference.providers import GenerationParams, InferenceError
from inference.services import provider_for

from .ingestion import ExtractionError, UnsupportedType, chunk_sections, extract_sections, sniff_type
from .models import Chunk, Document, DocumentStatus, DocumentType, McpServer, Memory, MemoryKind

logger = logging.getLogger(__name__)

EMBED_BATCH = 32  # chunks embedded per call (and per progress event)
MEMORY_TEXT_CHARS = 2000  # of a question/answer pair kept as a memory: MiniLM reads ~256 word pieces anyway
# Of a note a user adds: about the 256 word pieces all-MiniLM-L6-v2 reads (~4 characters each); a longer
# note's end would not count towards finding it.
MEMORY_NOTE_MAX_CHARS = 1000


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


def document_event_data(document: Document) -> dict:
    """Return the ``data`` of a ``document.ready`` / ``document.failed`` event (README, "Webhooks")."""
    return {
        "document_id": str(document.pk),
        "owner_id": document.owner_id,
        "title": document.title,
        "filename": document.filename,
        "content_type": document.content_type,
        "size_bytes": document.size_bytes,
        "status": document.status,
        "chunk_count": document.chunk_count,
        "failure_reason": document.failure_reason,
    }


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
            _ingest_enqueue_on_commit(document.pk)
            transaction.on_commit(lambda: document_event(document=document, stage="queued"))
    return document


def document_delete(*, document: Document) -> None:
    """Delete ``document``, its chunks and its stored file."""
    file = document.file
    with transaction.atomic():
        # Recorded first: once deleted, the document has no primary key.
        audit_record(
            action="document.delete",
            target=document,
            changes={
                "owner": document.owner.username,
                "filename": document.filename,
                "size_bytes": document.size_bytes,
            },
        )
        document.delete()
        # The file goes only once the rows are gone for good.
        transaction.on_commit(lambda: file.delete(save=False))


def document_retry(*, document: Document) -> Document:
    """Ingest ``document`` again from its stored file: back to ``pending``, and its ingestion queued."""
    with transaction.atomic():
        locked = Document.objects.select_for_update().get(pk=document.pk)
        locked.status, locked.failure_reason, locked.enqueued_at = DocumentStatus.PENDING, "", None
        locked.save(update_fields=["status", "failure_reason", "enqueued_at", "updated_at"])
        _ingest_enqueue_on_commit(locked.pk)
    document_event(document=locked, stage="queued")
    return locked


def _ingest_enqueue_on_commit(document_id) -> None:
    """Queue ``document_id``'s ingestion after the commit and record when the broker took it.

    Until then ``enqueued_at`` stays null: with the broker down the document stays ``pending`` and
    :func:`documents_requeue` queues it once the broker is back.
    """
    from .tasks import document_ingest_task  # here: tasks.py imports this module

    task_enqueue_on_commit(document_ingest_task, str(document_id), on_sent=lambda: _mark_enqueued(document_id))


def _mark_enqueued(document_id) -> None:
    Document.objects.filter(pk=document_id, status=DocumentStatus.PENDING).update(enqueued_at=timezone.now())


# Documents looked at per sweep of documents_requeue: bounds one run's work (the next run goes on).
REQUEUE_PER_SWEEP = 100
# A pending document without enqueued_at is this old before a sweep queues it: its own upload's
# enqueue (on commit) comes first.
REQUEUE_GRACE = timedelta(seconds=30)
# A pending document queued this long ago and still not started most likely lost its message (a Redis
# restart without persistence): it is queued again (a second message finds it done and does nothing).
REQUEUE_PENDING_AFTER = timedelta(minutes=30)


def documents_requeue(*, grace: timedelta = REQUEUE_GRACE) -> dict[str, int]:
    """Queue again the ingestions that an outage or a dead worker lost; Celery beat runs it every minute.

    - ``pending`` documents older than ``grace`` whose ingestion the broker never took
      (``enqueued_at`` null: uploaded while Redis was down), or took :data:`REQUEUE_PENDING_AFTER` ago;
    - ``processing`` documents whose ingestion stopped giving signs of life for
      ``KB_INGEST_STALL_SECONDS`` (its worker was killed; the broker would only deliver the task again
      after ``CELERY_VISIBILITY_TIMEOUT``, an hour): back to ``pending`` and queued, or, after
      ``KB_INGEST_MAX_ATTEMPTS`` runs, ``failed`` with the reason (a document that kills its worker
      each time must not loop).

    Stops at the first document the broker refuses (still down: the next sweep tries again). Return
    ``{"queued": n, "failed": n}``.
    """
    from .tasks import document_ingest_task  # here: tasks.py imports this module

    now = timezone.now()
    stall = timedelta(seconds=settings.KB_INGEST_STALL_SECONDS)
    counts = {"queued": 0, "failed": 0}
    to_queue = []  # stalled documents first, then pending ones
    stalled = Document.objects.filter(status=DocumentStatus.PROCESSING).filter(
        Q(heartbeat_at__lt=now - stall) | Q(heartbeat_at__isnull=True, updated_at__lt=now - stall)
    )
    for document_id in stalled.values_list("pk", flat=True)[:REQUEUE_PER_SWEEP]:
        with transaction.atomic():
            locked = (
                Document.objects.select_for_update().filter(pk=document_id, status=DocumentStatus.PROCESSING).first()
            )
            if locked is None:
                continue
            if locked.attempts >= settings.KB_INGEST_MAX_ATTEMPTS:
                fail = True
            else:
                fail = False
                locked.status, locked.enqueued_at, locked.heartbeat_at = DocumentStatus.PENDING, None, None
                locked.save(update_fields=["status", "enqueued_at", "heartbeat_at", "updated_at"])
        if fail:
            _fail(document_id, f"Ingestion stopped {locked.attempts} times without finishing (its worker died).")
            counts["failed"] += 1
        else:
            logger.info("Ingestion of document %s stalled (its worker died); queuing it again", document_id)
            to_queue.append(document_id)
    pending = Document.objects.filter(status=DocumentStatus.PENDING, created_at__lt=now - grace).filter(
        Q(enqueued_at__isnull=True) | Q(enqueued_at__lt=now - REQUEUE_PENDING_AFTER)
    )
    to_queue += [pk for pk in pending.order_by("created_at").values_list("pk", flat=True)[:REQUEUE_PER_SWEEP]]
    for document_id in dict.fromkeys(to_queue):
        if not task_enqueue(document_ingest_task, str(document_id)):
            break  # the broker is still down: the next sweep tries again
        _mark_enqueued(document_id)
        counts["queued"] += 1
    return counts


def _fail(document_id, reason: str) -> Document | None:
    with transaction.atomic():
        document = Document.objects.select_for_update().filter(pk=document_id).first()
        if document is None:
            return None
        # A failed document has no chunks: none from an older version of it are ever cited.
        Chunk.objects.filter(document=document).delete()
        document.status, document.failure_reason, document.chunk_count = DocumentStatus.FAILED, reason[:2000], 0
        document.save(update_fields=["status", "failure_reason", "chunk_count", "updated_at"])
        event_emit("document.failed", document_event_data(document))
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
        document.heartbeat_at = timezone.now()
        document.save(update_fields=["status", "failure_reason", "attempts", "heartbeat_at", "updated_at"])
    document_event(document=document, stage="extract")
    with _heartbeat(document_id):
        return _document_ingest_run(document, on_progress=on_progress)


@contextmanager
def _heartbeat(document_id) -> Iterator[None]:
    """Record a sign of life of this ingestion every ``KB_INGEST_HEARTBEAT_SECONDS`` (a thread) while the block runs.

    A worker killed mid-ingestion stops it; :func:`documents_requeue` then sees the document stalled.
    """
    stop = threading.Event()

    def beat() -> None:
        try:
            while not stop.wait(settings.KB_INGEST_HEARTBEAT_SECONDS):
                Document.objects.filter(pk=document_id, status=DocumentStatus.PROCESSING).update(
                    heartbeat_at=timezone.now()
                )
        except Exception:  # the database is down: the document may be requeued, which is harmless
            logger.warning("Could not record the heartbeat of document %s", document_id, exc_info=True)
        finally:
            connections.close_all()  # this thread's connections only

    thread = threading.Thread(target=beat, name=f"ingest-heartbeat-{document_id}", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()


def _document_ingest_run(document: Document, *, on_progress: Callable[[int, int], None] | None) -> Document | None:
    """Extract, chunk, embed and store ``document`` (``processing``); see :func:`document_ingest`."""
    document_id = document.pk
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
        event_emit("document.ready", document_event_data(locked))
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
        last_pk = None  # chunks have integer keys, memories UUIDs: both are ordered
        while True:
            remaining = model.objects.all() if last_pk is None else model.objects.filter(pk__gt=last_pk)
            rows = list(remaining.order_by("pk")[:batch_size])
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


def memory_note_create(*, owner, content: str) -> Memory:
    """Store ``content``, in the user's own words, as an embedded ``note`` memory of ``owner``; return it.

    The note is recalled like the memories of past conversations (the nearest ones to each
    question), and only while ``owner`` has memory on: it may be added with memory off, and waits.
    ``content`` is stripped of surrounding whitespace. Raise :class:`ParleyError` ``empty_memory``
    (400) when nothing is left, ``memory_too_long`` (400) over :data:`MEMORY_NOTE_MAX_CHARS`
    characters; :class:`InferenceError` when the embedding model fails. Blocking: runs the
    embedding model.
    """
    content = content.strip()
    if not content:
        raise ParleyError("The memory is empty.", code="empty_memory")
    if len(content) > MEMORY_NOTE_MAX_CHARS:
        raise ParleyError(
            f"The memory is {len(content):,} characters long; the limit is {MEMORY_NOTE_MAX_CHARS:,}.",
            code="memory_too_long",
        )
    return Memory.objects.create(owner=owner, kind=MemoryKind.NOTE, content=content, embedding=embed_text(content))


def memory_delete(*, memory: Memory) -> None:
    """Delete ``memory``: it is never recalled again."""
    memory.delete()


def memory_delete_all(*, owner) -> int:
    """Delete every memory of ``owner`` (exchanges, summaries, notes); return how many were deleted."""
    deleted, _ = Memory.objects.filter(owner=owner).delete()
    return deleted


def mcp_server_allow_tools(*, server: McpServer, tools: list[str]) -> McpServer:
    """Set ``server``'s allow-list to ``tools`` (names as the server lists them, kept in order, once each).

    The allow-list is what a turn may offer and run (unless ``allow_all_tools``); saving it changes
    ``updated_at``, so processes list the server's tools afresh.
    """
    before = list(server.allowed_tools)
    server.allowed_tools = list(dict.fromkeys(str(name) for name in tools))
    with transaction.atomic():
        server.save(update_fields=["allowed_tools", "updated_at"])
        audit_record(
            action="mcp_server.allow_tools", target=server, changes={"allowed_tools": [before, server.allowed_tools]}
        )
    return server
