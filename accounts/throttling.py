"""DRF throttle policies for accounts. State lives in the default cache (Redis), shared by all processes."""

from rest_framework.settings import api_settings
from rest_framework.throttling import ScopedRateThrottle


class LoginRateThrottle(ScopedRateThrottle):
    """Limit token requests per client IP with the view's ``throttle_scope`` rate (``RATE_LIMIT_LOGIN``).

    Keyed by IP even when the request carries a session: it is the password guesses from one
    address that are limited. The client IP honours ``X-Forwarded-For`` only behind
    ``TRUSTED_PROXY_COUNT`` proxies (DRF's ``NUM_PROXIES``). Over the rate: 429 with ``Retry-After``.
    """

    def get_rate(self) -> str | None:
        # Read at request time, not import time as DRF does, so a changed setting takes effect.
        return api_settings.DEFAULT_THROTTLE_RATES.get(self.scope)

    def get_cache_key(self, request, view) -> str:
        return self.cache_format % {"scope": self.scope, "ident": self.get_ident(request)}
