"""Health probes of deployments (Celery beat, every ``ROUTING_PROBE_SECONDS``).

A probe of an OpenAI-compatible deployment is one ``GET <base URL>/models`` with its API key: it
spends no tokens, and a 2xx answer means the server is up and takes the key. Its result goes into
the shared routing state as a real request's would (:func:`inference.routing.deployment_success`,
:func:`inference.routing.deployment_failure`): a failing probe counts towards the cooldown
(``ROUTING_COOLDOWN_FAILURES`` within ``ROUTING_COOLDOWN_WINDOW_SECONDS``) when the model has
something else to serve it, as a failed request does. A successful probe records the last success
only: it neither forgets the failures still in the window (the deployment shows ``failing`` until
they leave it) nor ends a cooldown early (the cooldown runs its course, then requests and probes try
the deployment again). Local llama.cpp deployments have nothing to probe over the network and are
reported ``local``. Drained deployments are probed too (operators want to know), though not routed to.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass

import httpx

from .models import Deployment, ModelConfig, Provider
from .routing import Router, deployment_failure, deployment_success, model_deployments

logger = logging.getLogger(__name__)

PROBE_READ_TIMEOUT_SECONDS = 10.0  # a /models listing is quick; a server slower than this is failing


@dataclass
class ProbeResult:
    """The outcome of one probe: ``status`` ``ok``, ``failed`` or ``local`` (not probed), and ``error``
    (``<code>: <detail>``, empty unless failed)."""

    deployment: str
    status: str
    error: str = ""


def deployment_probe(*, deployment: Deployment, may_cool: bool = True) -> ProbeResult:
    """Probe ``deployment`` (``GET <base URL>/models``) and record the result in the shared state.

    ``may_cool`` False (nothing else serves the model) records a failure without cooling it down.
    Never raises for an upstream problem: a missing API-key variable, a connection error, a timeout
    or a non-2xx status is a ``failed`` result whose ``error`` names it (the key itself never appears).
    """
    config = deployment.config
    if deployment.provider != Provider.OPENAI_COMPATIBLE:
        return ProbeResult(deployment=deployment.label, status="local")
    error = ""
    headers = {}
    if deployment.api_key_env:
        api_key = os.environ.get(deployment.api_key_env)
        if api_key:
            headers["Authorization"] = f"Bearer {api_key}"
        else:
            error = f"model_unavailable: The API-key environment variable {deployment.api_key_env} is not set."
    if not error:
        url = deployment.base_url.rstrip("/") + "/models"
        timeout = httpx.Timeout(PROBE_READ_TIMEOUT_SECONDS, connect=config.connect_timeout)
        try:
            response = httpx.get(url, headers=headers, timeout=timeout)
        except httpx.TimeoutException as exc:
            error = f"model_timeout: {type(exc).__name__} from {deployment.base_url}"
        except httpx.HTTPError as exc:
            error = f"model_unavailable: {type(exc).__name__}: {exc}"
        else:
            if not response.is_success:
                error = f"upstream_error: GET /models answered {response.status_code}"
    if error:
        deployment_failure(deployment=deployment, error=f"probe: {error}", may_cool=may_cool)
        return ProbeResult(deployment=deployment.label, status="failed", error=error)
    deployment_success(deployment=deployment, ttft_ms=None)
    return ProbeResult(deployment=deployment.label, status="ok")


def deployments_probe() -> list[ProbeResult]:
    """Probe every deployment of every model, enabled or not, drained or not (database, network).

    Each model's deployments are probed one after another; a failure cools a deployment down only
    when the model has another deployment or a fallback, as for real requests (:attr:`Router.alternatives`).
    """
    results = []
    for config in ModelConfig.objects.prefetch_related("deployments").order_by("slug"):
        router = Router(config=config, messages=[])
        router.load()
        for deployment in model_deployments(config):
            result = deployment_probe(deployment=deployment, may_cool=router.alternatives)
            if result.status == "failed":
                logger.warning("Probe of deployment %s failed: %s", result.deployment, result.error)
            results.append(result)
    return results
