"""Who is connected: a count of open WebSockets, across every Daphne process, kept in Redis.

Each open socket is a member (its channel name) of two Redis sorted sets, all sockets and its
user's, scored by when it was last seen (Unix seconds). The consumer's process re-marks its sockets
every ``HEARTBEAT_SECONDS``; counts leave out members not seen for ``TTL_SECONDS``, so the sockets
of a process that crashed (and never ran ``disconnect``) stop counting within ``TTL_SECONDS``.

The same per-user set caps each user's open sockets (``WS_MAX_CONNECTIONS_PER_USER``): a socket is
admitted by adding it and counting in one Redis transaction, so concurrent handshakes cannot both
slip under the cap.

Presence never breaks a socket: when Redis fails, marking is skipped (logged), counts are 0 and the
cap is not enforced.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, field

from django.conf import settings
from django_redis import get_redis_connection

logger = logging.getLogger(__name__)

HEARTBEAT_SECONDS = 30
# Three missed heartbeats: a busy event loop may be late once, not three times.
TTL_SECONDS = 3 * HEARTBEAT_SECONDS


def _key(user_id: int | None = None) -> str:
    base = f"{settings.REDIS_KEY_PREFIX}:presence:ws"
    return base if user_id is None else f"{base}:user:{user_id}"


def _redis():
    return get_redis_connection("default")


def ws_connection_mark(*, channel_name: str, user_id: int) -> None:
    """Record socket ``channel_name`` of user ``user_id`` as open now. Raise Redis errors."""
    now = time.time()
    pipe = _redis().pipeline(transaction=False)
    for key in (_key(), _key(user_id)):
        pipe.zadd(key, {channel_name: now})
        # A set no live process marks any more disappears on its own.
        pipe.expire(key, TTL_SECONDS)
    pipe.execute()


def ws_connection_admit(*, channel_name: str, user_id: int, limit: int) -> bool:
    """Mark socket ``channel_name`` of user ``user_id`` as open, unless the user already has ``limit`` open.

    Return whether it was admitted (and is now counted); ``limit`` 0 admits every socket. Sockets not
    seen for ``TTL_SECONDS`` do not count. Raise Redis errors.
    """
    now = time.time()
    user_key = _key(user_id)
    pipe = _redis().pipeline(transaction=True)  # MULTI: the count sees every earlier admission
    pipe.zremrangebyscore(user_key, "-inf", now - TTL_SECONDS)
    pipe.zadd(user_key, {channel_name: now})
    pipe.expire(user_key, TTL_SECONDS)
    pipe.zcard(user_key)
    open_sockets = pipe.execute()[-1]
    if limit and open_sockets > limit:
        _redis().zrem(user_key, channel_name)
        return False
    ws_connection_mark(channel_name=channel_name, user_id=user_id)
    return True


def ws_connection_unmark(*, channel_name: str, user_id: int) -> None:
    """Forget socket ``channel_name`` of user ``user_id`` (it closed). Raise Redis errors."""
    pipe = _redis().pipeline(transaction=False)
    for key in (_key(), _key(user_id)):
        pipe.zrem(key, channel_name)
    pipe.execute()


def ws_connection_count(*, user=None) -> int:
    """Return the number of open chat WebSockets, on all processes (of ``user`` only, when given).

    Sockets not seen for ``TTL_SECONDS`` are pruned first. Return 0 (logged) when Redis fails.
    """
    key = _key(user.pk if user is not None else None)
    try:
        pipe = _redis().pipeline(transaction=False)
        pipe.zremrangebyscore(key, "-inf", time.time() - TTL_SECONDS)
        pipe.zcard(key)
        return int(pipe.execute()[1])
    except Exception as exc:
        logger.warning("Presence unavailable (%s); counting 0 WebSockets", type(exc).__name__)
        return 0


@dataclass
class WsPresence:
    """One open socket's presence: what :func:`ws_connection_close` needs to forget it."""

    channel_name: str
    user_id: int
    closed: asyncio.Event = field(default_factory=asyncio.Event)
    heartbeat: asyncio.Task | None = field(default=None, repr=False)


async def _mark(presence: WsPresence, *, failed: bool) -> bool:
    """Mark the socket as seen now; return whether that failed (logged once per outage)."""
    try:
        await asyncio.to_thread(ws_connection_mark, channel_name=presence.channel_name, user_id=presence.user_id)
        return False
    except Exception as exc:
        if not failed:
            logger.warning("Presence not recorded (%s); WebSocket counts will be low", type(exc).__name__)
        return True


async def _heartbeat(presence: WsPresence, failed: bool) -> None:
    """Mark the socket every ``HEARTBEAT_SECONDS`` until it closes.

    Not cancelled but told to stop (``closed``), so a mark in flight always lands before the
    close's unmark and cannot leave a closed socket counted.
    """
    while True:
        try:
            await asyncio.wait_for(presence.closed.wait(), timeout=HEARTBEAT_SECONDS)
            return
        except TimeoutError:
            failed = await _mark(presence, failed=failed)


async def ws_connection_open(*, channel_name: str, user_id: int, limit: int = 0) -> WsPresence | None:
    """Start counting socket ``channel_name`` of user ``user_id``, until :func:`ws_connection_close`.

    Return None, counting nothing, when the user already has ``limit`` sockets open (0: no limit).
    Call from the consumer's ``connect``: the socket counts once this returns, and is marked again
    every ``HEARTBEAT_SECONDS`` by a background task. When Redis fails the socket is admitted.
    """
    presence = WsPresence(channel_name=channel_name, user_id=user_id)
    try:
        admitted = await asyncio.to_thread(ws_connection_admit, channel_name=channel_name, user_id=user_id, limit=limit)
        failed = False
    except Exception as exc:
        logger.warning("Presence not recorded (%s); WebSocket counts will be low", type(exc).__name__)
        admitted, failed = True, True
    if not admitted:
        return None
    presence.heartbeat = asyncio.get_running_loop().create_task(_heartbeat(presence, failed))
    return presence


async def ws_connection_close(presence: WsPresence | None) -> None:
    """Stop counting the socket of ``presence`` (None: it never opened). Never raises."""
    if presence is None:
        return
    presence.closed.set()
    if presence.heartbeat is not None:
        await asyncio.gather(presence.heartbeat, return_exceptions=True)
    try:
        await asyncio.to_thread(ws_connection_unmark, channel_name=presence.channel_name, user_id=presence.user_id)
    except Exception as exc:  # the entry ages out after TTL_SECONDS
        logger.warning("Presence not cleared (%s)", type(exc).__name__)
