"""The channel layer: channels-redis with a connection pool that waits for a free connection.

channels-redis builds each host's pool with redis-py's ``ConnectionPool``, which raises
``ConnectionError("Too many connections")`` at once when all ``max_connections`` are in use: under
a flood of sockets, joins, leaves and event relays then fail (and a failed leave used to leave a
socket counted). ``BlockingConnectionPool`` instead waits up to ``timeout`` seconds for a connection
to come back, and only then raises.

When Redis is down, channels-redis's ``receive`` raises, and Channels lets that end the consumer:
every open socket died with 1011. Here ``receive`` instead returns a
``{"type": "channel_layer.unavailable"}`` message after :data:`RETRY_SECONDS`, which the consumer
handles (:meth:`core.websocket.JsonWebsocketConsumer.channel_layer_unavailable`), and tries again.
"""

from __future__ import annotations

import asyncio
import logging

from channels_redis.core import RedisChannelLayer as BaseRedisChannelLayer
from redis.asyncio import BlockingConnectionPool
from redis.exceptions import RedisError

logger = logging.getLogger(__name__)

# What the channel layer raises when Redis is down, unreachable or saturated.
CHANNEL_LAYER_ERRORS = (RedisError, OSError, TimeoutError)
UNAVAILABLE = "channel_layer.unavailable"
# Seconds between a failed receive and the next try: a socket polls a down Redis once a second.
RETRY_SECONDS = 1.0


class RedisChannelLayer(BaseRedisChannelLayer):
    """``channels_redis.core.RedisChannelLayer`` whose pools wait for a free connection.

    Each entry of ``hosts`` is a dict with ``address`` (a ``redis://`` URL) and, besides redis-py's
    connection options, ``max_connections`` (per process and event loop; redis-py's default 50) and
    ``timeout`` (seconds to wait for a free connection before ``redis.exceptions.ConnectionError``;
    None waits forever).
    """

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
