"""Reads for the knowledge base and memory: documents, and nearest-neighbour search with pgvector.

Every read is scoped to one owner: a user's documents, chunks and memories are never returned
for another user, whatever id is asked for.
"""

from __future__ import annotations

from dataclasses import dataclass

from django.conf import settings
from django.db import connection, transaction
from django.db.models import QuerySet
from django.http import Http404
from pgvector.django import CosineDistance

from accounts.access import visible_to
from accounts.models import User
from inference.embeddings import embed_text

from .models import Chunk, Document, DocumentStatus, McpServer, Memory


def document_list(*, user) -> QuerySet[Document]:
    """Return ``user``'s documents, newest first."""
    return Document.objects.filter(owner=user)


def document_get(*, user, document_id) -> Document:
    """Return ``user``'s document ``document_id``; raise ``Http404`` if none (or someone else's: not told apart)."""
    document = Document.objects.filter(owner=user, pk=document_id).first()
    if document is None:
        raise Http404("No such document.")
    return document


@dataclass
class ChunkHit:
    chunk_id: int
    document_id: str
    title: str
    index: int
    content: str
    similarity: float  # cosine similarity, -1..1 (1 - pgvector's cosine distance)

    def citation(self) -> dict:
        """Return the citation stored on an answer: ``{document_id, title, chunk_id, similarity}``."""
        return {
            "document_id": self.document_id,
            "title": self.title,
            "chunk_id": self.chunk_id,
            "similarity": round(self.similarity, 4),
        }


@dataclass
class MemoryHit:
    memory_id: str
    conversation_id: str | None  # None for a note
    kind: str
    content: str
    similarity: float


def knowledge_available(*, user_id: int, memory: bool) -> tuple[bool, bool]:
    """Return ``(has ready chunks, has memories)`` for the user: cheap, so a turn can skip embedding."""
    has_chunks = Chunk.objects.filter(owner_id=user_id).exists()
    has_memories = memory and Memory.objects.filter(owner_id=user_id).exists()
    return has_chunks, has_memories


def _nearest(queryset: QuerySet, embedding: list[float], top_k: int) -> list:
    """Return the ``top_k`` rows of ``queryset`` nearest ``embedding`` (cosine), with ``distance``.

    Uses the HNSW index. With a filter (the owner), pgvector 0.8's iterative index scan keeps
    scanning until enough rows pass it, instead of returning fewer than ``top_k``. ``ef_search``
    (``KB_HNSW_EF_SEARCH``) trades recall for speed.
    """
    with transaction.atomic():
        with connection.cursor() as cursor:
            # SET LOCAL: the settings end with this transaction, whatever the connection does next.
            cursor.execute("SET LOCAL hnsw.iterative_scan = 'relaxed_order'")
            cursor.execute("SET LOCAL hnsw.ef_search = %s", [int(settings.KB_HNSW_EF_SEARCH)])
        rows = list(queryset.annotate(distance=CosineDistance("embedding", embedding)).order_by("distance")[:top_k])
    # relaxed_order may return rows slightly out of order: put them back in order.
    return sorted(rows, key=lambda row: row.distance)


def chunk_search(
    *, user_id: int, query: str | None = None, embedding: list[float] | None = None, top_k: int | None = None
) -> list[ChunkHit]:
    """Return the ``top_k`` (``KB_TOP_K``) chunks of ``user_id``'s documents most similar to ``query``.

    Give ``query`` (embedded here) or its ``embedding`` (384 floats). Only the owner's chunks are
    searched. Blocking (database, maybe the embedding model).
    """
    top_k = top_k or settings.KB_TOP_K
    if embedding is None:
        embedding = embed_text(query or "")
    # No filter on the document's status: chunks exist only for documents that were ingested
    # (a failed ingestion deletes them), and a join filter would keep the planner off the index.
    rows = _nearest(Chunk.objects.filter(owner_id=user_id).select_related("document"), embedding, top_k)
    return [
        ChunkHit(
            chunk_id=row.pk,
            document_id=str(row.document_id),
            title=row.document.title,
            index=row.index,
            content=row.content,
            similarity=1 - row.distance,
        )
        for row in rows
    ]


def memory_list(*, user) -> QuerySet[Memory]:
    """Return ``user``'s memories (exchanges, summaries, notes), newest first, without their embeddings."""
    return Memory.objects.filter(owner=user).defer("embedding").order_by("-created_at", "pk")


def memory_get(*, user, memory_id) -> Memory:
    """Return ``user``'s memory ``memory_id``; raise ``Http404`` if none (or someone else's: not told apart)."""
    memory = Memory.objects.filter(owner=user, pk=memory_id).defer("embedding").first()
    if memory is None:
        raise Http404("No such memory.")
    return memory


def memory_search(*, user_id: int, embedding: list[float], top_k: int, exclude_conversation_id=None) -> list[MemoryHit]:
    """Return ``user_id``'s ``top_k`` memories most similar to ``embedding``, not from ``exclude_conversation_id``.

    Notes (from no conversation) are always searched. The caller checks that the user has memory on.
    """
    queryset = Memory.objects.filter(owner_id=user_id)
    if exclude_conversation_id is not None:
        # exclude() keeps the rows whose conversation is NULL (notes): Django adds "IS NOT NULL".
        queryset = queryset.exclude(conversation_id=exclude_conversation_id)
    return [
        MemoryHit(
            memory_id=str(row.pk),
            conversation_id=str(row.conversation_id) if row.conversation_id else None,
            kind=row.kind,
            content=row.content,
            similarity=1 - row.distance,
        )
        for row in _nearest(queryset, embedding, top_k)
    ]


def kb_stats(*, user=None) -> dict:
    """Return counts for ``manage.py kb stats``: documents by status, chunks, memories (one user or all)."""
    from django.db.models import Count, Sum

    documents = Document.objects.all() if user is None else Document.objects.filter(owner=user)
    chunks = Chunk.objects.all() if user is None else Chunk.objects.filter(owner=user)
    memories = Memory.objects.all() if user is None else Memory.objects.filter(owner=user)
    by_status = dict(documents.values_list("status").annotate(n=Count("pk")).order_by())
    return {
        "documents": {status: by_status.get(status, 0) for status in DocumentStatus.values},
        "bytes": documents.aggregate(total=Sum("size_bytes"))["total"] or 0,
        "chunks": chunks.count(),
        "memories": dict(memories.values_list("kind").annotate(n=Count("pk")).order_by()),
        "embedding_models": sorted(
            set(documents.exclude(embedding_model="").values_list("embedding_model", flat=True))
        ),
    }


def mcp_servers_for_user(*, user_id: int) -> list[McpServer]:
    """Return the enabled MCP servers ``user_id`` may use (:func:`accounts.access.visible_to`): those with
    no groups, or one of the user's groups.

    An inactive or unknown user gets none. Ordered by slug.
    """
    user = User.objects.filter(pk=user_id, is_active=True).first()
    if user is None:
        return []
    return list(visible_to(McpServer.objects.filter(enabled=True), user=user).order_by("slug"))
