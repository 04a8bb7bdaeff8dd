"""Turn a stored file into passages: sniff its type, extract its text, split it into token-aware chunks.

Pure functions over bytes and strings: no database, no network. ``agents.services`` runs them.
"""

from __future__ import annotations

import io
import json
import logging
import re
import threading
from dataclasses import dataclass
from pathlib import PurePath

from inference.embeddings import local_model_path

from .models import DocumentType

logger = logging.getLogger(__name__)

ALLOWED_SUFFIXES = {
    ".txt": DocumentType.TEXT,
    ".text": DocumentType.TEXT,
    ".md": DocumentType.MARKDOWN,
    ".markdown": DocumentType.MARKDOWN,
    ".html": DocumentType.HTML,
    ".htm": DocumentType.HTML,
    ".pdf": DocumentType.PDF,
    "": DocumentType.TEXT,
}
_HTML_START = re.compile(rb"^\s*(<!doctype\s+html|<html|<head|<body)", re.IGNORECASE)


class UnsupportedType(ValueError):
    """The file is none of the supported types (PDF, HTML, Markdown, UTF-8 text)."""


class ExtractionError(ValueError):
    """The file's text could not be read; the message says why, for the user."""


def sniff_type(*, head: bytes, filename: str, body: bytes | None = None) -> str:
    """Return the :class:`DocumentType` value of a file from its content, checked against its name.

    ``head`` is the file's first bytes (8 KiB is enough); ``body`` the whole file, needed to check
    that a text file is UTF-8. PDF is recognised by its ``%PDF-`` magic number, HTML by its opening
    tag, anything else must be valid UTF-8 (Markdown when named ``.md``). The name's suffix must
    be one of :data:`ALLOWED_SUFFIXES`. Raise :class:`UnsupportedType` otherwise.
    """
    suffix = PurePath(filename).suffix.lower()
    if suffix not in ALLOWED_SUFFIXES:
        raise UnsupportedType(f"Files of type {suffix!r} are not supported; upload .txt, .md, .html or .pdf.")
    if head.startswith(b"%PDF-"):
        return DocumentType.PDF
    if suffix == ".pdf":
        raise UnsupportedType("The file is named .pdf but is not a PDF.")
    data = body if body is not None else head
    if b"\x00" in data:
        raise UnsupportedType("The file is binary; upload .txt, .md, .html or .pdf.")
    try:
        data.decode("utf-8")
    except UnicodeDecodeError as exc:
        # A file cut at the end of ``head`` may end inside a character: only an error before that counts.
        if body is not None or exc.start < len(data) - 4:
            raise UnsupportedType("The file is not a PDF and not UTF-8 text.") from exc
    if _HTML_START.match(head) or suffix in (".html", ".htm"):
        return DocumentType.HTML
    return ALLOWED_SUFFIXES[suffix]


class DocumentTooLarge(ExtractionError):
    """The file's text is over the per-document budget (``KB_MAX_DOCUMENT_CHARS``)."""


HTML_MARKUP_FACTOR = 4  # an HTML source may be this many times the text budget: markup is most of a page


def extract_sections(*, data: bytes, content_type: str, max_chars: int = 0) -> list[str]:
    """Return the text of a file as sections (PDF pages, JSONL pairs, or the whole text), none empty.

    Chunks never span two sections. JSONL lines are ``{"question", "answer"}`` objects, each one
    section ``"Q: ...\nA: ..."``. ``max_chars`` (0: none) bounds the text: reading stops, with
    :class:`DocumentTooLarge`, as soon as more characters than that are extracted (PDF pages are
    read one at a time), and an HTML source over :data:`HTML_MARKUP_FACTOR` times it is refused before
    it is parsed (the parser's tree takes ~250 bytes of memory per source byte). Raise
    :class:`ExtractionError` when the file cannot be read or holds no text.
    """
    if content_type == DocumentType.PDF:
        sections = _pdf_pages(data, max_chars=max_chars)
    elif content_type == DocumentType.JSONL:
        sections = _jsonl_pairs(data)
    else:
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise ExtractionError("The file is not UTF-8 text.") from exc
        if content_type == DocumentType.HTML:
            if max_chars and len(text) > HTML_MARKUP_FACTOR * max_chars:
                raise _too_large(len(text), max_chars, what="HTML source", limit=HTML_MARKUP_FACTOR * max_chars)
            text = _html_text(text)
        sections = [text]
    sections = [_tidy(s) for s in sections]
    sections = [s for s in sections if s]
    total = sum(len(s) for s in sections)
    if max_chars and total > max_chars:
        raise _too_large(total, max_chars)
    if not sections:
        raise ExtractionError("The file holds no text (a scanned PDF needs OCR, which is not supported).")
    return sections


def _too_large(size: int, max_chars: int, *, what: str = "text", limit: int | None = None) -> DocumentTooLarge:
    limit = limit or max_chars
    return DocumentTooLarge(
        f"The document's {what} is over {limit:,} characters ({size:,} read); the limit per document is "
        f"{max_chars:,} characters of text. Split it into smaller files."
    )


def _tidy(text: str) -> str:
    text = text.replace("\x00", "")
    text = re.sub(r"[ \t\f\v]+", " ", text)
    return re.sub(r"\n\s*\n\s*", "\n\n", text).strip()


def _pdf_pages(data: bytes, *, max_chars: int = 0) -> list[str]:
    from pypdf import PdfReader
    from pypdf.errors import PyPdfError

    try:
        reader = PdfReader(io.BytesIO(data))
        if reader.is_encrypted:
            raise ExtractionError("The PDF is encrypted.")
        pages, total = [], 0
        for page in reader.pages:
            pages.append(page.extract_text() or "")
            total += len(pages[-1])
            if max_chars and total > max_chars:  # stop reading: the rest would only be thrown away
                raise _too_large(total, max_chars)
        return pages
    except ExtractionError:
        raise
    except (PyPdfError, ValueError, KeyError, TypeError, AttributeError, OSError) as exc:
        # pypdf raises a variety of errors for damaged files; all of them mean "unreadable".
        raise ExtractionError(f"The PDF could not be read: {exc}".strip()) from exc


def _html_text(html: str) -> str:
    from bs4 import BeautifulSoup

    soup = BeautifulSoup(html, "html.parser")
    for tag in soup(["script", "style", "noscript", "template"]):
        tag.decompose()
    return soup.get_text("\n")


def _jsonl_pairs(data: bytes) -> list[str]:
    sections = []
    for number, line in enumerate(data.decode("utf-8", errors="replace").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            question, answer = str(row["question"]).strip(), str(row["answer"]).strip()
        except (ValueError, KeyError, TypeError) as exc:
            raise ExtractionError(f'Line {number} is not a {{"question", "answer"}} JSON object.') from exc
        sections.append(f"Q: {question}\nA: {answer}")
    return sections


# Chunking


@dataclass
class Passage:
    text: str
    token_count: int


_tokenizer = None
_tokenizer_lock = threading.Lock()


def _load_tokenizer():
    """Return all-MiniLM-L6-v2's WordPiece tokenizer (``tokenizers``, no torch), or None without it."""
    global _tokenizer
    with _tokenizer_lock:
        if _tokenizer is None:
            try:
                from tokenizers import Tokenizer  # optional: chunking falls back to words without it

                tokenizer = Tokenizer.from_file(str(local_model_path() / "tokenizer.json"))
                tokenizer.no_truncation()
                tokenizer.no_padding()
                _tokenizer = tokenizer
            except Exception as exc:  # missing package or file: fall back to words
                logger.warning("Chunking by words: the MiniLM tokenizer is unavailable (%s)", exc)
                _tokenizer = False
        return _tokenizer or None


def chunk_sections(sections: list[str], *, size: int, overlap: int) -> list[Passage]:
    """Split sections into passages of at most ``size`` tokens, each sharing ``overlap`` tokens with the last.

    Tokens are all-MiniLM-L6-v2 word pieces (the embedding model reads at most 256 of them), counted
    with its own tokenizer. Without that tokenizer, one word counts as 4/3 tokens, the usual
    approximation for English text. Windows start on a token boundary and are cut from the original
    text, so the passage reads as the source did.
    """
    if not 0 <= overlap < size:
        raise ValueError("overlap must be at least 0 and smaller than size")
    tokenizer = _load_tokenizer()
    passages: list[Passage] = []
    for section in sections:
        if tokenizer is not None:
            offsets = [o for o in tokenizer.encode(section, add_special_tokens=False).offsets if o[1] > o[0]]
        else:
            words = [m.span() for m in re.finditer(r"\S+", section)]
            # Spread each word's 4/3 tokens: approximate, documented above.
            offsets = []
            for start, end in words:
                offsets.append((start, end))
                if len(offsets) % 3 == 0:
                    offsets.append((end, end))
        step = size - overlap
        for first in range(0, max(len(offsets), 1), step):
            window = offsets[first : first + size]
            if not window:
                break
            start, end = window[0][0], max(o[1] for o in window)
            text = section[start:end].strip()
            if text:
                passages.append(Passage(text=text, token_count=len(window)))
            if first + size >= len(offsets):
                break
    return passages
