"""The channel layer: channels-redis's Redis Pub/Sub layer, with per-channel bounds, drop counting
and Redis outages told to the consumers.

Why Pub/Sub (``channels_redis.pubsub``) and not the list-based ``channels_redis.core`` layer: a
group event is one ``PUBLISH``; Redis pushes it once to each process subscribed to the group, and
the process hands it to its sockets in that group from memory. The list-based layer writes the event
into every member channel's sorted set (a Lua script over all of them) and each process pops its
messages back one ``BZPOPMIN`` round trip at a time, on one key per process whose ``capacity``
counts every socket of that process together: at 50 sockets streaming 20 events/s through one
process it fell seconds behind and dropped events, the ``generation.completed`` among them
(bench/load.py, README "Relay capacity").

What Pub/Sub does not keep: a message published while a process is not subscribed (Redis down or
restarting, a socket not joined yet) is not stored for later. What is added here for that:

- Each channel's local queue holds at most ``capacity`` messages; past that its oldest is dropped,
  counted in ``parley_channel_layer_dropped_total{where="receive_buffer"}``, and the channel's next
  ``receive`` returns ``{"type": "channel_layer.lagged", "dropped": n}`` before the messages kept.
- When the process's subscription fails (Redis down), every channel of the process receives
  ``{"type": "channel_layer.unavailable", "error"}`` once (the consumer tells its client, see
  :meth:`core.websocket.JsonWebsocketConsumer.channel_layer_unavailable`); redis-py reconnects and
  subscribes again about once a second, and once it has, every channel receives
  ``{"type": "channel_layer.resumed"}``: what was published in between is lost, and a consumer that
  relays a stream re-reads what it missed from the database (``chat.consumers``).
- The pools are redis-py's ``BlockingConnectionPool`` (wait up to ``timeout`` seconds for a free
  connection instead of failing at once), from the same ``hosts`` settings as before.

``group_add`` and ``receive`` also take a channel named by the caller rather than made by
``new_channel()`` (a turn's stop listener, an SSE stream): it is subscribed on first use.
"""

from __future__ import annotations

import asyncio
import logging
import uuid

from channels_redis.pubsub import RedisPubSubChannelLayer as BasePubSubChannelLayer
from channels_redis.pubsub import RedisPubSubLoopLayer, RedisSingleShardConnection
from channels_redis.utils import _wrap_close
from redis.asyncio import BlockingConnectionPool, Redis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError

from . import prometheus

logger = logging.getLogger(__name__)

# What the channel layer raises when Redis is down, unreachable or saturated.
CHANNEL_LAYER_ERRORS = (RedisError, OSError, TimeoutError)
UNAVAILABLE = "channel_layer.unavailable"
RESUMED = "channel_layer.resumed"
LAGGED = "channel_layer.lagged"
# Seconds between tries while the subscription fails: a process polls a down Redis once a second.
RETRY_SECONDS = 1.0
DEFAULT_CAPACITY = 100  # channels-redis's default


class _ChannelQueue(asyncio.Queue):
    """One channel's messages in this process: at most ``capacity``, the oldest dropped and counted past that."""

    def __init__(self, capacity: int):
        super().__init__()
        self.capacity = capacity
        self.dropped = 0  # since the channel's last receive

    def put_nowait(self, item) -> None:
        if self.qsize() >= self.capacity:
            self.get_nowait()
            self.dropped += 1
            prometheus.channel_layer_dropped(where="receive_buffer")
        super().put_nowait(item)


class _Shard(RedisSingleShardConnection):
    """One Redis host's publish and subscribe connections, with a blocking pool and outages reported."""

    def _ensure_redis(self) -> None:
        if self._redis is None:
            host = dict(self.host)
            pool = BlockingConnectionPool.from_url(host.pop("address"), **host)
            self._redis = Redis(connection_pool=pool)
            self._pubsub = self._redis.pubsub()

    async def publish(self, channel: str, message: bytes) -> None:
        # channels-redis holds the shard's lock for the whole PUBLISH round trip, so each publish of the
        # process waits for the one before it: every turn's tokens, one round trip at a time (a ceiling
        # of 1/RTT events per second per process). redis-py's pool serves concurrent commands on
        # connections of their own; the lock is only needed to make the client. One turn's events
        # still leave in order: its relay awaits each send before the next.
        redis = self._redis
        if redis is None:
            async with self._lock:
                self._ensure_redis()
                redis = self._redis
        try:
            await redis.publish(channel, message)
        except RedisConnectionError:
            # After a Redis restart every pooled connection is dead, and each fails its next command
            # (redis-py then drops it): without a second try, the first events each process sent
            # after the restart were lost (the 40 x 3 Redis-restart cluster check lost message.created
            # frames and final tokens). Once more, on a new connection; a second failure is an outage.
            await redis.publish(channel, message)

    async def _do_receiving(self) -> None:
        # channels-redis's loop, plus: an outage is told to every channel once, and so is the recovery.
        down = False
        while True:
            try:
                if self._pubsub and self._pubsub.subscribed:
                    message = await self._pubsub.get_message(ignore_subscribe_messages=True, timeout=0.1)
                    if down:
                        down = self.channel_layer.down = False
                        logger.warning("Channel layer subscription is back")
                        self.channel_layer.broadcast({"type": RESUMED})
                    self._receive_message(message)
                else:
                    await asyncio.sleep(0.1)
            except (asyncio.CancelledError, GeneratorExit):
                raise
            except CHANNEL_LAYER_ERRORS as exc:
                if not down:
                    down = self.channel_layer.down = True
                    logger.warning("Channel layer subscription failed (%s)", type(exc).__name__)
                    self.channel_layer.broadcast({"type": UNAVAILABLE, "error": type(exc).__name__})
                await asyncio.sleep(RETRY_SECONDS)
            except Exception:
                logger.exception("Unexpected exception in the channel layer's receive task")
                await asyncio.sleep(RETRY_SECONDS)


class _LoopLayer(RedisPubSubLoopLayer):
    def __init__(self, *args, capacity: int = DEFAULT_CAPACITY, **kwargs):
        super().__init__(*args, **kwargs)
        self.capacity = capacity
        # The subscription is failing (Redis down): joins fail at once rather than after redis-py's
        # retries, so a socket opened meanwhile is refused cleanly within a second or two.
        self.down = False
        self._shards = [_Shard(shard.host, self) for shard in self._shards]

    async def _subscribe_to_channel(self, channel: str) -> None:
        self.channels[channel] = _ChannelQueue(self.capacity)
        await self._get_shard(channel).subscribe(channel)

    async def new_channel(self, prefix: str = "specific.") -> str:
        channel = f"{self.prefix}{prefix}{uuid.uuid4().hex}"
        try:
            if self.down:
                raise RedisConnectionError("The channel layer's subscription is down.")
            await self._subscribe_to_channel(channel)
        except CHANNEL_LAYER_ERRORS as exc:
            # Redis is down: Channels makes a consumer's channel before the consumer runs, and a raise
            # here would answer the handshake with an HTTP 500. The consumer starts, fails to join its
            # groups and closes cleanly (core.websocket). Only a direct send() to this channel would
            # miss it, and Parley sends only to groups.
            logger.warning("Channel %s not subscribed: the channel layer is unavailable (%s)", channel, exc)
            self.channels[channel] = _ChannelQueue(self.capacity)
        return channel

    def broadcast(self, message: dict) -> None:
        """Put ``message`` in every channel of this process (outage notices)."""
        data = self.channel_layer.serialize(message)
        for queue in list(self.channels.values()):
            queue.put_nowait(data)

    async def receive(self, channel: str) -> dict:
        queue = self.channels.get(channel)
        if queue is not None and queue.dropped:
            dropped, queue.dropped = queue.dropped, 0
            return {"type": LAGGED, "dropped": dropped}
        return await super().receive(channel)

    async def group_add(self, group: str, channel: str) -> None:
        if self.down:
            raise RedisConnectionError("The channel layer's subscription is down.")
        if channel not in self.channels:  # named by the caller, not made by new_channel()
            await self._subscribe_to_channel(channel)
        await super().group_add(group, channel)


class RedisChannelLayer(BasePubSubChannelLayer):
    """``channels_redis.pubsub.RedisPubSubChannelLayer`` with bounded channels and outage notices (see the module).

    Settings: ``hosts`` (each a dict with ``address``, a ``redis://`` URL, and redis-py connection
    options, including ``max_connections`` and ``timeout``: seconds to wait for a free connection),
    ``prefix``, and ``capacity`` (messages one channel holds in its process; default 100).
    """

    def _get_layer(self) -> _LoopLayer:
        loop = asyncio.get_running_loop()
        layer = self._layers.get(loop)
        if layer is None:
            layer = self._layers[loop] = _LoopLayer(*self._args, **self._kwargs, channel_layer=self)
            _wrap_close(self, loop)
        return layer
