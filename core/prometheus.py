"""Parley's own Prometheus metrics and the protected ``/metrics`` endpoint.

Metric names are stable (dashboards and alerts depend on them)::

    parley_llm_requests_total{model,provider,status,deployment}
                                                       model requests: chat turns and /v1 calls; deployment
                                                       "<model>/<name>" that served it ("none": cache, error)
    parley_llm_tokens_total{model,kind}                tokens, kind "prompt" | "completion"
    parley_llm_ttft_seconds{model,deployment}          histogram: time to first token
    parley_llm_generation_seconds{model}               histogram: whole request, first byte to last
    parley_cache_requests_total{layer,result}          cache lookups, result "hit" | "miss"
    parley_ws_connections                              gauge: open chat WebSockets
    parley_channel_layer_dropped_total{where}          channel-layer messages dropped for a full channel,
                                                       where "receive_buffer" (a channel more than
                                                       CHANNEL_LAYER_CAPACITY behind in its process)
    parley_celery_tasks_total{task,state}              Celery tasks, state "sent" | "started" |
                                                       "success" | "failure" | "retry" | "revoked"

Several processes (Daphne, Celery workers) share one host: with ``PROMETHEUS_MULTIPROC_DIR`` set
(``python -m core.launcher run`` sets it before starting them), prometheus_client writes every
value to a memory-mapped file per process in that directory, and ``/metrics`` adds them up with
``MultiProcessCollector``, so a scrape of any process reports the whole host. Without it (one
process), the default registry is served.

Recording functions never raise: a metric must not break a chat turn.
"""

from __future__ import annotations

import hmac
import ipaddress
import logging
import os

from django.conf import settings
from django.http import HttpRequest, HttpResponse
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    multiprocess,
)

logger = logging.getLogger(__name__)

LLM_REQUESTS = Counter(
    "parley_llm_requests_total",
    "Model requests (chat turns and /v1 calls).",
    ["model", "provider", "status", "deployment"],
)
LLM_TOKENS = Counter("parley_llm_tokens_total", "Tokens of model requests.", ["model", "kind"])
# Buckets in seconds: a local model answers in tens of milliseconds, a remote or busy one in seconds.
LLM_TTFT = Histogram(
    "parley_llm_ttft_seconds",
    "Time to first token of model requests.",
    ["model", "deployment"],
    buckets=(0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0),
)
LLM_GENERATION = Histogram(
    "parley_llm_generation_seconds",
    "Duration of model requests, start to last token.",
    ["model"],
    buckets=(0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0),
)
CACHE_REQUESTS = Counter("parley_cache_requests_total", "Response cache lookups.", ["layer", "result"])
# livesum: the sum over the processes still alive (a dead process's connections are gone with it).
WS_CONNECTIONS = Gauge("parley_ws_connections", "Open chat WebSocket connections.", multiprocess_mode="livesum")
CELERY_TASKS = Counter("parley_celery_tasks_total", "Celery tasks by state.", ["task", "state"])
CHANNEL_LAYER_DROPPED = Counter(
    "parley_channel_layer_dropped_total", "Channel-layer messages dropped because a channel was full.", ["where"]
)


def channel_layer_dropped(*, where: str, count: int = 1) -> None:
    """Count ``count`` channel-layer messages dropped at ``where`` (``receive_buffer``)."""
    _safely("channel_layer_dropped", lambda: CHANNEL_LAYER_DROPPED.labels(where=where).inc(count))


def _safely(what: str, record) -> None:
    try:
        record()
    except Exception as exc:  # e.g. the multiprocess directory vanished: keep serving
        logger.warning("Metric %s not recorded (%s: %s)", what, type(exc).__name__, exc)


def llm_request_observe(
    *,
    model: str,
    provider: str,
    status: str,
    prompt_tokens: int,
    completion_tokens: int,
    ttft_ms: int | None,
    latency_ms: int | None,
    deployment: str = "",
) -> None:
    """Count one model request, its tokens, and its TTFT and duration (given in ms, kept in seconds).

    ``deployment`` is ``<model slug>/<deployment name>`` of the deployment that served it (empty: none,
    e.g. a cached answer or a request that failed before any deployment took it).

    Called once per request, by :func:`accounts.services.usage_record`, which every chat turn and
    /v1 call goes through.
    """

    def record() -> None:
        LLM_REQUESTS.labels(
            model=model, provider=provider or "unknown", status=str(status), deployment=deployment or "none"
        ).inc()
        if prompt_tokens:
            LLM_TOKENS.labels(model=model, kind="prompt").inc(prompt_tokens)
        if completion_tokens:
            LLM_TOKENS.labels(model=model, kind="completion").inc(completion_tokens)
        if ttft_ms is not None:
            LLM_TTFT.labels(model=model, deployment=deployment or "none").observe(ttft_ms / 1000)
        if latency_ms is not None:
            LLM_GENERATION.labels(model=model).observe(latency_ms / 1000)

    _safely("parley_llm_*", record)


def cache_lookup_observe(*, layer: str, hit: bool) -> None:
    """Count one cache lookup of ``layer`` as a hit or a miss."""
    _safely(
        "parley_cache_requests_total", lambda: CACHE_REQUESTS.labels(layer=layer, result="hit" if hit else "miss").inc()
    )


def ws_connection_opened() -> None:
    _safely("parley_ws_connections", WS_CONNECTIONS.inc)


def ws_connection_closed() -> None:
    _safely("parley_ws_connections", WS_CONNECTIONS.dec)


def celery_task_observe(*, task: str, state: str) -> None:
    """Count a Celery task reaching ``state`` (see the module docstring for the states)."""
    _safely("parley_celery_tasks_total", lambda: CELERY_TASKS.labels(task=task, state=state).inc())


def multiprocess_dir() -> str | None:
    """Return ``PROMETHEUS_MULTIPROC_DIR`` (read by prometheus_client itself at import), or None."""
    return os.environ.get("PROMETHEUS_MULTIPROC_DIR") or None


def registry() -> CollectorRegistry:
    """Return the registry to expose: every process's values in multiprocess mode, else this process's."""
    if multiprocess_dir():
        collected = CollectorRegistry()
        multiprocess.MultiProcessCollector(collected)
        return collected
    return REGISTRY


def sample_value(name: str, labels: dict[str, str] | None = None) -> float:
    """Return the current value of one sample (summed over this host's processes); 0.0 if absent."""
    labels = labels or {}
    total = 0.0
    for family in registry().collect():
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                total += sample.value
    return total


def mark_process_dead(pid: int) -> None:
    """Drop the live gauges of a finished process (a Celery pool child, a restarted server)."""
    if multiprocess_dir():
        _safely("mark_process_dead", lambda: multiprocess.mark_process_dead(pid))


# Headers a reverse proxy adds (as request.META keys); any HTTP_X_FORWARDED_* counts too.
FORWARDING_HEADERS = ("HTTP_FORWARDED", "HTTP_X_REAL_IP", "HTTP_X_CLIENT_IP", "HTTP_TRUE_CLIENT_IP", "HTTP_VIA")


def _forwarded(request: HttpRequest) -> bool:
    return any(name in request.META for name in FORWARDING_HEADERS) or any(
        name.startswith("HTTP_X_FORWARDED_") for name in request.META
    )


def _from_loopback(request: HttpRequest) -> bool:
    # A request relayed by a reverse proxy on this host comes from loopback too: behind a declared
    # proxy (TRUSTED_PROXY_COUNT), or with any forwarding header (a proxy may send only X-Real-IP),
    # no request is taken as local.
    if settings.TRUSTED_PROXY_COUNT > 0 or _forwarded(request):
        return False
    try:
        return ipaddress.ip_address(request.META.get("REMOTE_ADDR", "")).is_loopback
    except ValueError:
        return False


def metrics_view(request: HttpRequest) -> HttpResponse:
    """``GET /metrics``: the Prometheus text format.

    With ``METRICS_TOKEN`` set, only ``Authorization: Bearer <METRICS_TOKEN>`` gets in (401 without
    credentials, 403 with wrong ones); without it, only direct requests from loopback (403
    otherwise): none at all when ``TRUSTED_PROXY_COUNT`` > 0, and none carrying a forwarding header.
    """
    token = settings.METRICS_TOKEN
    if token:
        scheme, _, given = request.headers.get("Authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not given.strip():
            response = HttpResponse("Authentication required.\n", status=401, content_type="text/plain")
            response["WWW-Authenticate"] = 'Bearer realm="metrics"'
            return response
        if not hmac.compare_digest(given.strip().encode(), token.encode()):
            return HttpResponse("Forbidden.\n", status=403, content_type="text/plain")
    elif not _from_loopback(request):
        return HttpResponse("Forbidden: set METRICS_TOKEN to scrape through a proxy or from elsewhere.\n", status=403)
    return HttpResponse(generate_latest(registry()), content_type=CONTENT_TYPE_LATEST)
