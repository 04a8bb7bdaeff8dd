"""The channel layer: channels-redis with a connection pool that waits for a free connection.

channels-redis builds each host's pool with redis-py's ``ConnectionPool``, which raises
``ConnectionError("Too many connections")`` at once when all ``max_connections`` are in use: under
a flood of sockets, joins, leaves and event relays then fail (and a failed leave used to leave a
socket counted). ``BlockingConnectionPool`` instead waits up to ``timeout`` seconds for a connection
to come back, and only then raises.
"""

from __future__ import annotations

from channels_redis.core import RedisChannelLayer as BaseRedisChannelLayer
from redis.asyncio import BlockingConnectionPool


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
