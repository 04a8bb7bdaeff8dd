"""Set the audit context (:mod:`accounts.audit`) for each HTTP request and WebSocket connection."""

from __future__ import annotations

from asgiref.sync import iscoroutinefunction
from django.core.signals import request_finished
from django.dispatch import receiver
from django.urls import NoReverseMatch, reverse
from django.utils.decorators import sync_and_async_middleware
from rest_framework.settings import api_settings

from .audit import AuditContext, audit_context_var, authenticated
from .models import AuditSource
from .throttling import client_ip


def _admin_prefix() -> str:
    try:
        return reverse("admin:index")
    except NoReverseMatch:
        return "/admin/"


def request_source(request) -> str:
    """Return the :class:`AuditSource` of a Django request: ``admin``, ``api`` (``/api/``, ``/v1/``) or ``web``."""
    path = request.path_info
    if path.startswith(_admin_prefix()):
        return AuditSource.ADMIN
    if path.startswith(("/api/", "/v1/")):
        return AuditSource.API
    return AuditSource.WEB


def request_audit_context(request) -> AuditContext:
    """Return the :class:`AuditContext` of ``request``; its actor is read when an event is recorded."""
    return AuditContext(
        source=request_source(request),
        ip=client_ip(request) or None,
        # Read late: DRF sets a JWT's or API key's user on the Django request only once the view runs.
        actor=lambda: authenticated(getattr(request, "user", None)),
    )


@sync_and_async_middleware
def audit_context_middleware(get_response):
    """Set the request's :class:`AuditContext` for the services the view calls."""

    if iscoroutinefunction(get_response):

        async def middleware(request):
            audit_context_var.set(request_audit_context(request))
            return await get_response(request)

    else:

        def middleware(request):
            audit_context_var.set(request_audit_context(request))
            return get_response(request)

    return middleware


@receiver(request_finished, dispatch_uid="parley_audit_context_clear")
def _request_finished(**kwargs) -> None:
    # As core.log's request id: kept until the response is sent (streamed bodies included), then cleared.
    audit_context_var.set(None)


def scope_ip(scope: dict) -> str | None:
    """Return the client IP of an ASGI ``scope`` as :func:`accounts.throttling.client_ip` would.

    ``X-Forwarded-For`` counts only behind ``TRUSTED_PROXY_COUNT`` proxies (DRF's ``NUM_PROXIES``
    rule: the address that many hops from the right); otherwise the peer's address.
    """
    headers = dict(scope.get("headers") or [])
    forwarded = headers.get(b"x-forwarded-for", b"").decode("latin-1")
    proxies = api_settings.NUM_PROXIES
    if proxies and forwarded:
        addresses = [a.strip() for a in forwarded.split(",") if a.strip()]
        if addresses:
            return addresses[-min(proxies, len(addresses))]
    client = scope.get("client")
    return client[0] if client else None


class AuditASGIMiddleware:
    """ASGI middleware for WebSockets, inside ``AuthMiddlewareStack``: source ``ws``, the socket's user and IP."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        user = scope.get("user")
        context = AuditContext(source=AuditSource.WS, ip=scope_ip(scope), actor=lambda: authenticated(user))
        token = audit_context_var.set(context)
        try:
            return await self.app(scope, receive, send)
        finally:
            audit_context_var.reset(token)
