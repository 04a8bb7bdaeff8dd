"""Celery tasks of the inference app: health probes of every deployment (Celery beat)."""

from __future__ import annotations

from celery import shared_task

from .probes import deployments_probe


@shared_task(name="inference.deployments_probe", acks_late=False)
def deployments_probe_task() -> dict[str, str]:
    """Probe every deployment (:func:`inference.probes.deployments_probe`), every ``ROUTING_PROBE_SECONDS``
    in beat; return ``{deployment label: "ok" | "failed" | "local"}``."""
    return {result.deployment: result.status for result in deployments_probe()}
