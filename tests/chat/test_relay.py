"""A socket that missed events of an answer still ends it: real Channels stack, Redis Pub/Sub layer, PostgreSQL."""

import asyncio

import pytest
from channels.db import database_sync_to_async
from channels.layers import get_channel_layer

from chat import turns
from chat.models import MessageStatus
from chat.services import message_finalize, message_send
from tests.chat.test_websocket import connect, receive_until, setup_conversation

pytestmark = pytest.mark.django_db(transaction=True)

ANSWER = "The keeper climbs the stairs at dusk and lights the lamp."


async def started_answer(conversation):
    """Store a user message and its streaming answer, as a turn does first; return the answer's id."""
    turn = await database_sync_to_async(message_send)(conversation=conversation, content="Tell me a story.")
    await database_sync_to_async(turn.admission.release)()  # no turn runs: free its generation slot
    return str(turn.assistant_message.pk)


async def test_a_socket_that_fell_behind_gets_the_end_and_the_whole_text_from_the_stored_answer(local_model):
    user, conversation = await setup_conversation(local_model)
    communicator, connected, _ = await connect(user, conversation.pk)
    assert connected
    answer_id = await started_answer(conversation)
    await turns.send_event(conversation.pk, {"type": "generation.started", "message_id": answer_id, "model": "m"})
    await turns.send_event(
        conversation.pk, {"type": "token", "message_id": answer_id, "delta": ANSWER[:11], "offset": 0}
    )
    assert (await communicator.receive_json_from(timeout=10))["type"] == "generation.started"
    assert (await communicator.receive_json_from(timeout=10))["delta"] == ANSWER[:11]

    # The rest of the stream and its generation.completed are lost on the way (not sent here, as a
    # socket more than CHANNEL_LAYER_CAPACITY events behind loses them), and the answer is stored;
    # the channel layer then tells the socket it dropped events (the message it returns then).
    await database_sync_to_async(message_finalize)(message_id=answer_id, content=ANSWER, status=MessageStatus.COMPLETE)
    await get_channel_layer().group_send(
        turns.conversation_group(conversation.pk), {"type": "channel_layer.lagged", "dropped": 7}
    )

    completed = (await receive_until(communicator, "generation.completed"))[-1]
    assert completed["message"]["id"] == answer_id
    assert completed["message"]["status"] == "complete"
    assert completed["message"]["content"] == ANSWER

    # The turn's own generation.completed, arriving late, is not shown a second time.
    await turns.send_event(conversation.pk, {"type": "generation.completed", "message": completed["message"]})
    await turns.send_event(conversation.pk, {"type": "node", "name": "probe", "status": "start"})
    assert (await communicator.receive_json_from(timeout=10))["name"] == "probe"
    await communicator.disconnect()


async def test_after_a_lag_the_end_comes_once_the_answer_is_stored_and_carries_its_error(local_model):
    user, conversation = await setup_conversation(local_model)
    communicator, connected, _ = await connect(user, conversation.pk)
    assert connected
    answer_id = await started_answer(conversation)  # its generation.started is lost too

    await get_channel_layer().group_send(
        turns.conversation_group(conversation.pk), {"type": "channel_layer.lagged", "dropped": 3}
    )
    await asyncio.sleep(0.5)
    assert await communicator.receive_nothing(timeout=0.5)  # still generating: nothing to end yet

    await database_sync_to_async(message_finalize)(
        message_id=answer_id,
        content="Partial",
        status=MessageStatus.ERROR,
        error="The model timed out.",
        metadata={"error_code": "model_timeout"},
    )
    error, completed = await receive_until(communicator, "generation.completed")
    assert error["code"] == "model_timeout" and error["message_id"] == answer_id
    assert completed["message"]["status"] == "error"
    assert completed["message"]["content"] == "Partial"
    await communicator.disconnect()
