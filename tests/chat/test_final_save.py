"""A turn whose final save fails: tried again, and its clients always learn how the answer ended.

The failures are real PostgreSQL errors: a trigger on the messages table refuses the final save
(the update that takes an answer out of ``streaming``) while a sequence says so. A sequence, because
its counter survives the rollback of the refused statement.
"""

import pytest
from channels.db import database_sync_to_async
from django.db import connection

from chat import turns
from chat.models import Message, MessageStatus, Role
from chat.services import conversation_create, message_send
from conftest import make_user

from .test_websocket import connect, receive_until

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def refuse_final_saves():
    """Return ``arm(times)``: the next ``times`` final saves of any answer fail in PostgreSQL."""

    def arm(times: int) -> None:
        with connection.cursor() as cursor:
            cursor.execute("CREATE SEQUENCE test_final_save_tries")
            cursor.execute(
                f"""
                CREATE FUNCTION test_refuse_final_save() RETURNS trigger AS $$
                BEGIN
                  IF NEW.role = 'assistant' AND NEW.status <> 'streaming'
                     AND nextval('test_final_save_tries') <= {int(times)} THEN
                    RAISE EXCEPTION 'the database is away (test)';
                  END IF;
                  RETURN NEW;
                END $$ LANGUAGE plpgsql
                """
            )
            cursor.execute(
                "CREATE TRIGGER test_refuse_final_save BEFORE UPDATE ON chat_message "
                "FOR EACH ROW EXECUTE FUNCTION test_refuse_final_save()"
            )

    yield arm
    with connection.cursor() as cursor:
        cursor.execute("DROP TRIGGER IF EXISTS test_refuse_final_save ON chat_message")
        cursor.execute("DROP FUNCTION IF EXISTS test_refuse_final_save()")
        cursor.execute("DROP SEQUENCE IF EXISTS test_final_save_tries")


async def test_a_final_save_that_fails_twice_is_tried_again_and_the_answer_is_stored(local_model, refuse_final_saves):
    await database_sync_to_async(refuse_final_saves)(2)
    user = await database_sync_to_async(make_user)("alice")
    conversation = await database_sync_to_async(conversation_create)(owner=user)
    communicator, connected, _ = await connect(user, conversation.pk)
    assert connected
    await communicator.send_json_to({"type": "message.send", "content": "Say hello.", "params": {"max_tokens": 8}})
    events = await receive_until(communicator, "generation.completed")
    await communicator.disconnect()

    final = events[-1]["message"]
    streamed = "".join(e["delta"] for e in events if e["type"] == "token")
    assert final["status"] == MessageStatus.COMPLETE and final["content"] == streamed
    stored = await Message.objects.aget(conversation=conversation, role=Role.ASSISTANT)
    assert (stored.status, stored.content) == (MessageStatus.COMPLETE, streamed)


async def test_a_final_save_that_keeps_failing_still_ends_the_answer_for_its_clients(
    local_model, refuse_final_saves, monkeypatch
):
    # The real schedule tries for ~30 s; a short one keeps the test fast (a setting of the module).
    monkeypatch.setattr(turns, "FINAL_SAVE_DELAYS", (0.1, 0.1))
    await database_sync_to_async(refuse_final_saves)(1000)
    user = await database_sync_to_async(make_user)("alice")
    conversation = await database_sync_to_async(conversation_create)(owner=user)
    communicator, connected, _ = await connect(user, conversation.pk)
    assert connected
    turn = await database_sync_to_async(message_send)(
        conversation=conversation, content="Say hello.", params={"max_tokens": 8}
    )
    message = await turns.turn_run(turn)
    events = await receive_until(communicator, "generation.completed")
    await communicator.disconnect()

    streamed = "".join(e["delta"] for e in events if e["type"] == "token")
    assert streamed and message.content == streamed
    errors = [e for e in events if e["type"] == "error"]
    assert errors and errors[-1]["code"] == "service_unavailable"
    final = events[-1]["message"]
    assert final["status"] == MessageStatus.ERROR and final["content"] == streamed
    assert "could not be stored" in final["error"]
