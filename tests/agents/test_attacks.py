"""One chat message must not stall the server (issue 20, items 1 and 2): attacks through a real Daphne.

Each test sends an attack as a chat turn (REST with server-sent events, so the turn runs on Daphne's
event loop as it does for the WebSocket) and asks ``/health/`` again and again from before the send
until the turn's stream has ended. A stall of the event loop (or of the GIL) longer than
``HEALTH_BUDGET`` makes the probe in flight, or the next one, wait that long.
"""

import threading
import time

import httpx
import pytest

from accounts.services import api_key_create
from agents.graph import turn_graph
from chat.services import conversation_create
from conftest import make_user

pytestmark = pytest.mark.django_db(transaction=True)

# Seconds: a liveness probe slower than this while a turn runs is a stalled server. The stalls this
# guards against lasted 40 s to 90 s (a backtracking pattern, a calculator result of millions of
# digits); the bound is far above a busy machine's scheduling noise (a 1.3 s probe was seen while a
# benchmark held both cores), so it fails on a stall, not on load. What a hostile message costs, in
# milliseconds, is measured by bench/attacks.py.
HEALTH_BUDGET = 5.0
PROBE_INTERVAL = 0.02  # seconds between probes: a stall is seen within this much of its start

ATTACKS = {
    # Intent rules: each of these made the old arithmetic pattern backtrack for 40 s to 90 s.
    "32,000 digits": "1" * 32_000,
    "32,000 open parentheses": "(" * 32_000,
    "sqrt( without a closing parenthesis": "sqrt(" * 6_400,
    # The calculator: small expressions with huge integer results.
    "a big base to a small power, twice": "what is ((10**1000)**1000)**10",
    "a tower of powers": "what is 10**1000**1000",
    "9**9**9**9": "what is 9**9**9**9",
    "a product of big powers": "what is 99**9999 * 99**9999",
}


@pytest.fixture
def graph_built():
    """Build the turn graph here, before Daphne's process is forked from this one, so that it has it.

    The first turn of a process imports LangGraph on the event loop (~0.6 s, the same for every
    message): the probes are to measure the attack, not that.
    """
    turn_graph()


def send(base_url: str, key: str, conversation_id, content: str) -> list[str]:
    """Send ``content`` as a turn with SSE; return the event types received, once the stream has ended."""
    kinds = []
    with httpx.stream(
        "POST",
        f"{base_url}/api/v1/conversations/{conversation_id}/messages/",
        json={"content": content, "params": {"max_tokens": 1}, "cache": False},
        headers={"Authorization": f"Bearer {key}", "Accept": "text/event-stream"},
        timeout=300,
    ) as response:
        assert response.status_code == 200, response.read()
        kinds += [line.removeprefix("event: ") for line in response.iter_lines() if line.startswith("event: ")]
    return kinds


@pytest.mark.parametrize("attack", ATTACKS.values(), ids=ATTACKS.keys())
def test_health_answers_at_once_while_an_attack_turn_runs(graph_built, daphne_url, local_model, attack):
    user = make_user("alice")
    key = api_key_create(user=user, name="attack")[1]
    conversation = conversation_create(owner=user)
    result = {}
    sender = threading.Thread(target=lambda: result.update(kinds=send(daphne_url, key, conversation.pk, attack)))

    probes = []  # seconds each /health/ took
    with httpx.Client(base_url=daphne_url, timeout=300) as client:
        assert client.get("/health/").status_code == 200  # connected before the attack starts
        sender.start()
        while sender.is_alive():
            started = time.monotonic()
            assert client.get("/health/").status_code == 200
            probes.append(time.monotonic() - started)
            time.sleep(PROBE_INTERVAL)
    sender.join()

    assert result["kinds"][:2] == ["message.created", "generation.started"]
    assert result["kinds"][-1] == "generation.completed", "the turn did not end"
    assert max(probes) < HEALTH_BUDGET, f"/health/ took {max(probes):.2f} s while the turn ran"
