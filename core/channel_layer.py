"""The channel layer: channels-redis, with every message it drops counted.

channels-redis drops messages in two places, both silently by default: ``group_send`` skips a
channel whose Redis list already holds ``capacity`` messages (it logs "N of M channels over
capacity" at INFO on ``channels_redis.core``), and a process's receive buffer for a channel drops
its oldest message when ``capacity`` are waiting (channels_redis ``BoundedQueue``). Both are counted
in ``parley_channel_layer_dropped_total{where}`` (``where``: ``group_send`` | ``receive_buffer``),
so an operator sees when sockets fall behind and can raise ``CHANNEL_LAYER_CAPACITY``. Clients
recover what they missed from the stored answer (token ``offset``\\s, README "How it fits together").
"""

from __future__ import annotations

import collections
import functools
import logging

from channels_redis.core import BoundedQueue
from channels_redis.core import RedisChannelLayer as BaseRedisChannelLayer

from . import prometheus

OVER_CAPACITY = "%s of %s channels over capacity in group %s"  # channels_redis.core's log message


class _CountingQueue(BoundedQueue):
    def put_nowait(self, item):
        if self.full():
            prometheus.channel_layer_dropped(where="receive_buffer")
        return super().put_nowait(item)


class _OverCapacityCounter(logging.Filter):
    """Count the channels a ``group_send`` skipped, from channels-redis's own log record; let it through."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.msg == OVER_CAPACITY and record.args:
            prometheus.channel_layer_dropped(where="group_send", count=int(record.args[0]))
        return True


_counter = _OverCapacityCounter()


class RedisChannelLayer(BaseRedisChannelLayer):
    """channels-redis's layer (same settings: ``hosts``, ``prefix``, ``capacity``, ``expiry``...) that counts drops."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.receive_buffer = collections.defaultdict(functools.partial(_CountingQueue, self.capacity))
        log = logging.getLogger("channels_redis.core")
        if _counter not in log.filters:
            log.addFilter(_counter)
        if log.getEffectiveLevel() > logging.INFO:
            # The over-capacity record is logged at INFO: it must be created to be counted.
            log.setLevel(logging.INFO)
