"""The channel layer (Redis Pub/Sub, real Redis): events between processes, bounded channels, drops counted."""

import asyncio
import uuid

from django.conf import settings
from prometheus_client import REGISTRY

from core.channel_layer import LAGGED, RedisChannelLayer


def dropped(where: str) -> float:
    return REGISTRY.get_sample_value("parley_channel_layer_dropped_total", {"where": where}) or 0.0


def layer(**config) -> RedisChannelLayer:
    base = settings.CHANNEL_LAYERS["default"]["CONFIG"]
    return RedisChannelLayer(hosts=base["hosts"], prefix=f"{base['prefix']}:test", **config)


async def test_a_group_event_reaches_the_channels_of_another_process_and_not_those_that_left():
    # Two layers with their own connections stand for two Daphne processes.
    sender, receiver = layer(), layer()
    group = f"g{uuid.uuid4().hex}"
    # Channels named by their user (a turn's stop listener, an SSE stream) as well as made ones.
    named, made = f"sse.{uuid.uuid4().hex}", await receiver.new_channel()
    await receiver.group_add(group, named)
    await receiver.group_add(group, made)
    try:
        await sender.group_send(group, {"type": "chat.event", "number": 1})
        assert (await asyncio.wait_for(receiver.receive(named), 5))["number"] == 1
        assert (await asyncio.wait_for(receiver.receive(made), 5))["number"] == 1

        await receiver.group_discard(group, named)
        await sender.group_send(group, {"type": "chat.event", "number": 2})
        assert (await asyncio.wait_for(receiver.receive(made), 5))["number"] == 2
        assert receiver.channels[named].empty()
    finally:
        await sender.flush()
        await receiver.flush()


async def test_a_channel_that_falls_behind_keeps_the_newest_and_is_told_how_many_it_lost():
    sender, receiver = layer(), layer(capacity=2)
    group, channel = f"g{uuid.uuid4().hex}", f"c{uuid.uuid4().hex}"
    await receiver.group_add(group, channel)
    before = dropped("receive_buffer")
    try:
        for number in range(5):  # nobody reads the channel: it holds 2, the 3 oldest are dropped
            await sender.group_send(group, {"type": "chat.event", "number": number})
        await sender.group_send(group, {"type": "chat.event", "number": "last"})
        deadline = asyncio.get_running_loop().time() + 5
        while dropped("receive_buffer") - before < 4 and asyncio.get_running_loop().time() < deadline:
            await asyncio.sleep(0.05)
        assert dropped("receive_buffer") - before == 4
        assert await receiver.receive(channel) == {"type": LAGGED, "dropped": 4}
        kept = [(await receiver.receive(channel))["number"] for _ in range(2)]
        assert kept == [4, "last"]
    finally:
        await sender.flush()
        await receiver.flush()
