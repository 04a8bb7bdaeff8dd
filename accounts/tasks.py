"""Celery tasks of accounts."""

from celery import shared_task
from django.conf import settings

from . import services


@shared_task(acks_late=True)
def usage_prune_task() -> dict:
    """Delete usage older than ``USAGE_RECORD_RETENTION_DAYS`` / ``USAGE_DAILY_RETENTION_DAYS`` (nightly, beat).

    Idempotent: running it twice deletes nothing more. Return ``{"records": n, "daily": n}``.
    """
    records, daily = services.usage_prune(
        record_days=settings.USAGE_RECORD_RETENTION_DAYS, daily_days=settings.USAGE_DAILY_RETENTION_DAYS
    )
    return {"records": records, "daily": daily}


@shared_task(name="accounts.audit_prune", acks_late=True)
def audit_prune_task() -> dict:
    """Delete audit events older than ``AUDIT_RETENTION_DAYS`` (nightly, beat); return ``{"deleted": n}``.

    Idempotent: running it twice deletes nothing more.
    """
    return {"deleted": services.audit_prune(days=settings.AUDIT_RETENTION_DAYS)}
