"""The web process: Daphne, with a graceful stop. ``python -m config.web [daphne's options] config.asgi:application``.

Daphne on its own stops at SIGTERM (or SIGINT) by cancelling every application instance at once:
open sockets drop without a close frame (clients see 1006), and the turns this process is generating
(``INFERENCE_EXECUTION=inline``) die mid-answer, left ``streaming`` until the orphan sweep ends them a
minute or two later. Here a stop drains first (README, "Running on several machines", "Stopping"):

1. ``/health/ready/`` answers 503 ``stopping`` and the listening sockets close, so the load balancer
   and new clients go to the other web processes;
2. every open WebSocket is closed with code 1012 (RFC 6455 "service restart"): the chat page
   reconnects, through the load balancer, to another process, and goes on following its answers
   there (their events go through the channel layer, whichever process generates them);
3. the turns this process runs, and its HTTP requests under way (SSE streams, ``/v1`` completions),
   get up to ``WEB_STOP_GRACE_SECONDS`` to finish;
4. turns still generating then are stopped: each ends ``error`` with its partial text stored;
5. Daphne's own stop cancels what is left, and the process exits.

Every other option and behaviour is Daphne's (``daphne --help``).
"""

from __future__ import annotations

import asyncio
import logging
import time

import uvloop

# Before Daphne is imported: it makes the event loop Twisted runs on when its server module loads.
# uvloop (libuv) runs the loop's callbacks, timers and the Redis and PostgreSQL sockets in C.
asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())

from daphne.cli import CommandLineInterface  # noqa: E402
from daphne.server import Server  # noqa: E402
from daphne.ws_protocol import WebSocketProtocol  # noqa: E402
from twisted.internet import defer  # noqa: E402

logger = logging.getLogger("config.web")

CLOSE_SERVICE_RESTART = 1012  # RFC 6455 (IANA registry): the server is restarting, the client may reconnect
INTERRUPT_WAIT_SECONDS = 5.0  # after the grace: how long the stopped turns get to store their partial text
POLL_SECONDS = 0.1


class GracefulServer(Server):
    """Daphne's server, draining before it stops (see the module docstring)."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.ports: list = []  # the listening ports, once listening

    def listen_success(self, port):
        self.ports.append(port)
        return super().listen_success(port)

    def kill_all_applications(self):
        """Drain (steps 1-4), then cancel what is left (step 5). Run by Twisted before it shuts down."""
        drained = defer.Deferred.fromFuture(asyncio.ensure_future(self.drain()))
        drained.addErrback(lambda failure: logger.error("Draining failed: %s", failure.getErrorMessage()))
        drained.addBoth(lambda _: self.cancel_running())
        return drained

    def running(self) -> list[asyncio.Future]:
        """Return the application instances (requests, sockets) still running."""
        return [
            instance
            for details in list(self.connections.values())
            if (instance := details.get("application_instance")) is not None and not instance.done()
        ]

    def cancel_running(self) -> defer.Deferred:
        """Cancel the application instances still running, as Daphne's own stop does; fire once they are."""
        left = self.running()
        for instance in left:
            instance.cancel()
        return defer.Deferred.fromFuture(asyncio.ensure_future(asyncio.gather(*left, return_exceptions=True)))

    async def finish(self, timeout: float) -> None:
        """Wait up to ``timeout`` seconds for this process's turns, then its requests, to finish."""
        from chat.turns import turns_drain  # see drain()

        deadline = time.monotonic() + timeout
        await turns_drain(timeout=timeout)
        while self.running() and time.monotonic() < deadline:
            await asyncio.sleep(POLL_SECONDS)

    async def drain(self) -> None:
        """Steps 1-4 of the module docstring."""
        # Imported here, not at the top: Django's apps are loaded only once the CLI has imported the
        # application (config.asgi), after this module.
        from django.conf import settings

        from chat.turns import turns_interrupt
        from core.health import readiness_stop

        grace = settings.WEB_STOP_GRACE_SECONDS
        started = time.monotonic()
        readiness_stop()
        for port in self.ports:
            port.stopListening()
        sockets = [
            protocol
            for protocol in list(self.connections)
            if isinstance(protocol, WebSocketProtocol) and protocol.state == WebSocketProtocol.STATE_OPEN
        ]
        for protocol in sockets:
            # Not serverClose(): autobahn lets an application send only 1000 and 3000-4999.
            protocol.sendCloseFrame(code=CLOSE_SERVICE_RESTART, isReply=False)
        logger.info(
            "Stopping: %d sockets closed (1012); up to %g s for turns and requests to finish", len(sockets), grace
        )
        await self.finish(grace)
        if interrupted := turns_interrupt():
            await self.finish(INTERRUPT_WAIT_SECONDS)
            logger.warning(
                "Stopping: %d answers still generating after %g s were ended with their text so far", interrupted, grace
            )
        logger.info(
            "Stopping: drained in %.1f s; %d requests left to cancel", time.monotonic() - started, len(self.running())
        )


class WebCommandLineInterface(CommandLineInterface):
    """Daphne's command line, serving with :class:`GracefulServer`."""

    server_class = GracefulServer


if __name__ == "__main__":
    WebCommandLineInterface.entrypoint()
