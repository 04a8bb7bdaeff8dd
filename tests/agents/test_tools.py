"""The tool registry: the safe calculator, routing rules, the tool cache and the two call formats."""

import pytest

from agents.graph import intent_from_model
from agents.intent import intent_rules
from agents.tools import (
    REGISTRY,
    ToolContext,
    ToolError,
    calculate,
    openai_tools,
    parse_json_tool_call,
    parse_openai_tool_calls,
    tool_run,
)
from inference.cache import layer

from .conftest import ingested


def test_the_calculator_evaluates_arithmetic_without_eval():
    assert calculate("12.5 * 4") == 50
    assert calculate("(2 + 3) ** 2 / 5") == 5
    assert calculate("7 x 6") == 42
    assert calculate("1,000 * 3") == 3000
    assert calculate("sqrt(16) + pi") == pytest.approx(7.14159, abs=1e-4)
    for hostile in ["__import__('os').system('true')", "().__class__", "open('/etc/passwd')", "a + 1", "lambda: 1"]:
        with pytest.raises(ToolError):
            calculate(hostile)
    with pytest.raises(ToolError, match="too large"):
        calculate("9 ** 999999")
    with pytest.raises(ToolError, match="zero"):
        calculate("1 / 0")


@pytest.mark.parametrize(
    "attack",
    [
        "((10**1000)**1000)**10",  # the exponent is small, the base is not: ~15 s before issue 20
        "10**1000**1000",
        "9**9**9**9",
        "(10**1000)*(10**1000)",
        "99999999999**99999",
        "2**3999 * 2**3999 * 2**3999",
        "abs(-2**4001)",
        "round(7, -10**9)",  # 10**(10**9) inside round()
    ],
)
def test_the_calculator_refuses_results_too_large_to_compute_at_once(attack):
    with pytest.raises(ToolError, match="too large|at most"):
        calculate(attack)


def test_the_calculator_still_gives_big_exact_answers_and_refuses_what_is_not_a_number():
    assert calculate("2 ** 3999") == 2**3999
    assert len(str(calculate("10 ** 1000"))) == 1001
    assert calculate("1 ** (10 ** 1000)") == 1
    assert calculate("(-1) ** (10 ** 1000 + 1)") == -1
    assert calculate("1+" * 99 + "1") == 100
    for broken, reason in [
        ("-" * 150 + "1", "nested too deeply"),
        ("(-8) ** 0.5", "not a real number"),
        ("2.0 ** 100000", "out of range"),
        ("sqrt()", "failed"),
        ("1 +" * 100 + "1", "too long"),
    ]:
        with pytest.raises(ToolError, match=reason):
            calculate(broken)


@pytest.mark.parametrize(
    ("text", "intent", "tool"),
    [
        ("What is 12.5 * 4?", "calculate", "calculator"),
        ("calculate (3+4)*2", "calculate", "calculator"),
        ("What time is it?", "datetime", "datetime"),
        ("What did we discuss about Lisbon last time?", "conversation_search", "conversation_search"),
        ("Summarise my documents about taxes", "knowledge", None),
    ],
)
def test_obvious_intents_are_decided_by_rules(text, intent, tool):
    result = intent_rules(text)
    assert result["intent"] == intent
    assert result.get("tool") == tool


def test_plain_chat_and_dates_are_not_arithmetic():
    assert intent_rules("Tell me a story about a dragon.") is None
    assert intent_rules("I was born on 1990-05-12, remember it.") is None
    assert intent_rules("What is the best way to spend 3-4 days in Rome?") is None


@pytest.mark.django_db
def test_tool_results_are_cached_and_unknown_tools_refused(user):
    context = ToolContext(user_id=user.pk)
    first = tool_run(name="calculator", arguments={"expression": "6 * 7"}, context=context)
    again = tool_run(name="calculator", arguments={"expression": "6 * 7"}, context=context)
    assert (first.result, first.cached) == ("6 * 7 = 42", False)
    assert (again.result, again.cached) == ("6 * 7 = 42", True)
    assert layer("tool").stats()["hits"] == 1
    # Failures are kept too: asking again does not evaluate again.
    refused = [tool_run(name="calculator", arguments={"expression": "9**9**9**9"}, context=context) for _ in "ab"]
    assert [(r.ok, r.cached) for r in refused] == [(False, False), (False, True)]
    assert "too large" in refused[1].result
    refused = tool_run(name="shell", arguments={"command": "rm -rf /"}, context=context)
    assert not refused.ok and "Unknown tool" in refused.result
    assert (
        "current date and time"
        in tool_run(name="datetime", arguments={"timezone": "Europe/Paris"}, context=context).result
    )


def test_kb_search_returns_top_k_passages_and_refuses_a_bad_top_k(user):
    for index in range(4):
        ingested(owner=user, text=f"Note {index} about the alfalfa harvest in June.", title=f"Note {index}")
    context = ToolContext(user_id=user.pk)

    def passages(**extra) -> int:
        result = tool_run(name="kb_search", arguments={"query": "alfalfa harvest", **extra}, context=context)
        assert result.ok, result.result
        return result.result.count("similarity")

    assert passages() == 3  # the default
    assert passages(top_k=None) == 3  # a model's explicit null
    assert passages(top_k=1) == 1
    assert passages(top_k=4) == 4
    for bad in [0, 21, "2", 2.5, True]:
        refused = tool_run(name="kb_search", arguments={"query": "alfalfa", "top_k": bad}, context=context)
        assert not refused.ok and "top_k" in refused.result


def test_both_tool_call_formats_parse():
    assert parse_json_tool_call('Sure! {"tool": "calculator", "arguments": {"expression": "2+2"}}') == (
        "calculator",
        {"expression": "2+2"},
    )
    assert parse_json_tool_call('{"tool": null}') is None
    assert parse_json_tool_call("no json here") is None
    calls = [{"function": {"name": "calculator", "arguments": '{"expression": "1+1"}'}}]
    assert parse_openai_tool_calls(calls) == [("calculator", {"expression": "1+1"})]
    assert {t["function"]["name"] for t in openai_tools()} == {
        "calculator",
        "datetime",
        "kb_search",
        "conversation_search",
    }


@pytest.mark.django_db
def test_an_intent_model_classifies_what_rules_cannot_once_then_from_the_intent_cache(local_model):
    text = "Could you figure out the square root of one thousand seven hundred and sixty four for me"
    first = intent_from_model(text=text, model_slug=local_model.slug)  # JSON tool-call format (local model)
    assert first["source"] == "model", "the classifier failed"
    assert first["intent"] == "chat" or (first["intent"] == "tool" and first["tool"] in REGISTRY)
    assert intent_from_model(text=text, model_slug=local_model.slug) == {**first, "source": "cache"}
    assert layer("intent").stats()["hits"] == 1


@pytest.mark.django_db
def test_a_remote_intent_model_is_asked_through_openai_function_calling(local_model):
    from inference.models import ModelConfig, Provider
    from tests.servers import llama_cpp_server

    with llama_cpp_server("--chat_format", "chatml-function-calling") as base_url:
        ModelConfig.objects.create(
            slug="router",
            display_name="Router",
            provider=Provider.OPENAI_COMPATIBLE,
            model="smollm2",
            base_url=base_url,
        )
        result = intent_from_model(text="Use the calculator: what is 1234 * 5678?", model_slug="router")
    assert result["source"] == "model", "the function-calling request failed"
    assert result["intent"] == "chat" or (result["intent"] == "tool" and result["tool"] in REGISTRY)
