"""Sniffing, extraction, chunking and idempotent ingestion, with the real embedding model and pgvector."""

import pytest

from agents.ingestion import UnsupportedType, chunk_sections, extract_sections, sniff_type
from agents.models import Chunk, DocumentStatus, DocumentType
from agents.services import document_create, document_ingest

from .conftest import ingested, make_pdf

pytestmark = pytest.mark.django_db


def test_type_comes_from_the_content_not_only_the_name():
    assert sniff_type(head=make_pdf("hello"), filename="report.pdf") == DocumentType.PDF
    assert sniff_type(head=b"<!DOCTYPE html><p>hi</p>", filename="page.txt") == DocumentType.HTML
    assert sniff_type(head=b"# Title\n\ntext", filename="notes.md", body=b"# Title\n\ntext") == DocumentType.MARKDOWN
    with pytest.raises(UnsupportedType):
        sniff_type(head=b"plain words", filename="fake.pdf")  # named .pdf, not a PDF
    with pytest.raises(UnsupportedType):
        sniff_type(head=b"PK\x03\x04\x00\x00binary", filename="notes.txt")  # a zip named .txt
    with pytest.raises(UnsupportedType):
        sniff_type(head=b"hello", filename="script.exe")


def test_text_is_extracted_from_pdf_and_html():
    assert (
        "quarterly revenue grew"
        in extract_sections(data=make_pdf("The quarterly revenue grew by 12 percent."), content_type=DocumentType.PDF)[
            0
        ]
    )
    html = (
        b"<html><head><script>var secret = 1;</script><style>p{}</style></head><body><p>Visible text</p></body></html>"
    )
    (text,) = extract_sections(data=html, content_type=DocumentType.HTML)
    assert text == "Visible text"


def test_chunks_respect_the_token_budget_and_overlap():
    words = [f"word{i}" for i in range(400)]
    passages = chunk_sections([" ".join(words)], size=50, overlap=10)
    assert len(passages) > 5
    assert all(p.token_count <= 50 for p in passages)
    # Consecutive chunks share text: the end of one is the start of the next.
    first, second = passages[0].text.split(), passages[1].text.split()
    assert first[-1] in second[:10]
    # Nothing is lost: every word appears in some chunk.
    joined = " ".join(p.text for p in passages)
    assert all(w in joined for w in ("word0", "word199", "word399"))


def test_a_corrupt_pdf_ends_failed_with_a_reason(user):
    document = document_create(
        owner=user, data=b"%PDF-1.7\n" + bytes(range(256)) * 8, filename="broken.pdf", ingest=False
    )
    assert document.content_type == DocumentType.PDF
    document = document_ingest(document_id=document.pk)
    assert document.status == DocumentStatus.FAILED
    assert "PDF" in document.failure_reason
    assert not Chunk.objects.filter(document=document).exists()


def test_a_pdf_is_ingested_into_embedded_chunks(user):
    document = document_create(
        owner=user, data=make_pdf("Parley stores answers in PostgreSQL."), filename="a.pdf", ingest=False
    )
    document = document_ingest(document_id=document.pk)
    assert document.status == DocumentStatus.READY, document.failure_reason
    chunk = Chunk.objects.get(document=document)
    assert "PostgreSQL" in chunk.content
    assert len(chunk.embedding) == 384
    assert document.chunk_count == 1 and document.embedding_model == "local"


def test_ingesting_again_creates_no_duplicate_chunks(user):
    text = "\n\n".join(f"Paragraph {i} talks about topic number {i} at some length." * 3 for i in range(40))
    document = ingested(owner=user, text=text)
    count = Chunk.objects.filter(document=document).count()
    assert count > 2
    # A redelivered task finds the document ready and leaves it; a retry (status back to pending) replaces.
    assert document_ingest(document_id=document.pk).chunk_count == count
    type(document).objects.filter(pk=document.pk).update(status=DocumentStatus.PROCESSING)
    document = document_ingest(document_id=document.pk)
    assert document.status == DocumentStatus.READY
    assert Chunk.objects.filter(document=document).count() == count
    assert sorted(Chunk.objects.filter(document=document).values_list("index", flat=True)) == list(range(count))
    assert document.attempts == 2
