"""Who is acting, from where: the context an audit event takes its actor, source and IP from.

Services record changes with :func:`accounts.services.audit_record` and are called from views,
consumers, tasks and commands that do not pass the request down. The entry point sets an
:class:`AuditContext` in a context variable instead, which follows the call through sync and async
code (asgiref copies context variables into the threads of ``sync_to_async``), and the request id
comes from :mod:`core.log`'s own context variable:

- HTTP: :func:`accounts.middleware.audit_context_middleware` (in ``MIDDLEWARE``) keeps the request:
  the actor is read when an event is recorded, so a DRF view's JWT or API-key user (which DRF sets
  on the Django request once it authenticates) is seen as well as the session's. Source ``admin``
  under the admin's URL, ``api`` under ``/api/``, ``web`` elsewhere; the IP is the one the
  throttles use (``X-Forwarded-For`` only behind ``TRUSTED_PROXY_COUNT`` proxies).
- WebSocket: :class:`accounts.middleware.AuditASGIMiddleware` (inside ``AuthMiddlewareStack`` in
  ``config/asgi.py``): the connection's user, source ``ws``.
- ``manage.py``: commands that change state subclass :class:`AuditedCommand`: source ``cli``, the
  actor named by ``--actor <username>``, else the OS user (``os:<name>`` in ``actor_label``).
- Anything else (Celery tasks, the shell, scripts): no context, source ``system``, no actor.
"""

from __future__ import annotations

import getpass
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any

from django.core.management.base import BaseCommand, CommandError

from .models import AuditSource, User


@dataclass(frozen=True)
class AuditContext:
    """``source`` (an :class:`AuditSource`), ``ip`` (or None), and the actor: ``actor()`` returns the
    acting user or None (called when an event is recorded), ``actor_label`` names an actor that is no
    user (the OS user running a command)."""

    source: str
    ip: str | None = None
    actor: Callable[[], Any] = field(default=lambda: None)
    actor_label: str = ""


audit_context_var: ContextVar[AuditContext | None] = ContextVar("parley_audit_context", default=None)


def audit_context_get() -> AuditContext:
    """Return the running code's :class:`AuditContext`; outside any, source ``system`` and no actor."""
    return audit_context_var.get() or AuditContext(source=AuditSource.SYSTEM)


@contextmanager
def audit_context(
    *, source: str, ip: str | None = None, actor: Callable[[], Any] | None = None, actor_label: str = ""
) -> Iterator[AuditContext]:
    """Run the block with an :class:`AuditContext`; the previous one is back afterwards."""
    context = AuditContext(source=source, ip=ip, actor=actor or (lambda: None), actor_label=actor_label)
    token = audit_context_var.set(context)
    try:
        yield context
    finally:
        audit_context_var.reset(token)


def authenticated(user: Any) -> User | None:
    """Return ``user`` when it is an authenticated user, else None (AnonymousUser, None)."""
    return user if getattr(user, "is_authenticated", False) else None


class AuditedCommand(BaseCommand):
    """A management command whose changes are audited as source ``cli``.

    ``--actor <username>`` names the operator the changes are recorded for (it must exist; give it
    before a subcommand: ``manage.py cache --actor alice flush --all``); without it the OS user
    running the command is recorded as ``actor_label`` ``os:<name>``.
    """

    def create_parser(self, prog_name, subcommand, **kwargs):
        parser = super().create_parser(prog_name, subcommand, **kwargs)
        parser.add_argument(
            "--actor",
            metavar="USERNAME",
            help="Record the changes as made by this user (default: the OS user running the command).",
        )
        return parser

    def execute(self, *args, **options):
        username = options.get("actor")
        if username:
            user = User.objects.filter(username=username).first()
            if user is None:
                raise CommandError(f"--actor: no user {username!r}.")
            context = audit_context(source=AuditSource.CLI, actor=lambda: user, actor_label=user.get_username())
        else:
            context = audit_context(source=AuditSource.CLI, actor_label=f"os:{_os_user()}")
        with context:
            return super().execute(*args, **options)


def _os_user() -> str:
    try:
        return getpass.getuser()
    except Exception:  # no name for this uid (a container's): still a CLI change
        return "unknown"
