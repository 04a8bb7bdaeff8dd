"""The channel layer: channels-redis with a connection pool that waits, that survives a Redis outage,
and that counts every message it drops.

channels-redis builds each host's pool with redis-py's ``ConnectionPool``, which raises
``ConnectionError("Too many connections")`` at once when all ``max_connections`` are in use: under
a flood of sockets, joins, leaves and event relays then fail (and a failed leave used to leave a
socket counted). ``BlockingConnectionPool`` instead waits up to ``timeout`` seconds for a connection
to come back, and only then raises.

When Redis is down, channels-redis's ``receive`` raises, and Channels lets that end the consumer:
every open socket died with 1011. Here ``receive`` instead returns a
``{"type": "channel_layer.unavailable"}`` message after :data:`RETRY_SECONDS`, which the consumer
handles (:meth:`core.websocket.JsonWebsocketConsumer.channel_layer_unavailable`), and tries again.

channels-redis drops messages in two places, both silently by default: ``group_send`` skips a
channel whose Redis list already holds ``capacity`` messages (it logs "N of M channels over
capacity" at INFO on ``channels_redis.core``), and a process's receive buffer for a channel drops
its oldest message when ``capacity`` are waiting (channels_redis ``BoundedQueue``). Both are counted
in ``parley_channel_layer_dropped_total{where}`` (``where``: ``group_send`` | ``receive_buffer``),
so an operator sees when sockets fall behind and can raise ``CHANNEL_LAYER_CAPACITY``. Clients
recover what they missed from the stored answer (token ``offset``\\s, README "How it fits together").
"""

from __future__ import annotations

import asyncio
import collections
import functools
import logging

from channels_redis.core import BoundedQueue
from channels_redis.core import RedisChannelLayer as BaseRedisChannelLayer
from redis.asyncio import BlockingConnectionPool
from redis.exceptions import RedisError

from . import prometheus

logger = logging.getLogger(__name__)

# What the channel layer raises when Redis is down, unreachable or saturated.
CHANNEL_LAYER_ERRORS = (RedisError, OSError, TimeoutError)
UNAVAILABLE = "channel_layer.unavailable"
# Seconds between a failed receive and the next try: a socket polls a down Redis once a second.
RETRY_SECONDS = 1.0
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
    """``channels_redis.core.RedisChannelLayer`` whose pools wait for a free connection, and that counts drops.

    Same settings (``hosts``, ``prefix``, ``capacity``, ``expiry``...). Each entry of ``hosts`` is a
    dict with ``address`` (a ``redis://`` URL) and, besides redis-py's connection options,
    ``max_connections`` (per process and event loop; redis-py's default 50) and ``timeout`` (seconds
    to wait for a free connection before ``redis.exceptions.ConnectionError``; None waits forever).
    """

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.receive_buffer = collections.defaultdict(functools.partial(_CountingQueue, self.capacity))
        log = logging.getLogger("channels_redis.core")
        if _counter not in log.filters:
            log.addFilter(_counter)
        if log.getEffectiveLevel() > logging.INFO:
            # The over-capacity record is logged at INFO: it must be created to be counted.
            log.setLevel(logging.INFO)

    def create_pool(self, index: int) -> BlockingConnectionPool:
        host = dict(self.hosts[index])
        return BlockingConnectionPool.from_url(host.pop("address"), **host)

    async def receive(self, channel: str) -> dict:
        """Return the next message of ``channel``; with Redis failing, ``{"type": UNAVAILABLE, "error"}``.

        The failure message comes :data:`RETRY_SECONDS` after the failure, so a consumer that
        receives again at once retries about once a second.
        """
        try:
            return await super().receive(channel)
        except CHANNEL_LAYER_ERRORS as exc:
            logger.debug("Channel layer receive failed (%s)", type(exc).__name__)
            await asyncio.sleep(RETRY_SECONDS)
            return {"type": UNAVAILABLE, "error": type(exc).__name__}
