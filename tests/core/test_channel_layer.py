"""The channel layer counts the messages channels-redis drops for a full channel (real Redis)."""

import uuid

from django.conf import settings
from prometheus_client import REGISTRY

from core.channel_layer import RedisChannelLayer


def dropped(where: str) -> float:
    return REGISTRY.get_sample_value("parley_channel_layer_dropped_total", {"where": where}) or 0.0


async def test_messages_sent_to_a_full_channel_are_counted_as_dropped():
    config = settings.CHANNEL_LAYERS["default"]["CONFIG"]
    layer = RedisChannelLayer(hosts=config["hosts"], prefix=f"{config['prefix']}:test", capacity=2)
    group, channel = f"g{uuid.uuid4().hex}", f"c{uuid.uuid4().hex}"
    await layer.group_add(group, channel)
    before = dropped("group_send")
    try:
        for number in range(5):  # nobody reads the channel: it holds 2, the 3 others are dropped
            await layer.group_send(group, {"type": "chat.event", "number": number})
        assert dropped("group_send") - before == 3
        kept = [(await layer.receive(channel))["number"] for _ in range(2)]
        assert kept == [0, 1]
    finally:
        await layer.group_discard(group, channel)
        await layer.flush()
