"""Reads for model configs and their deployments' figures."""

from datetime import timedelta

from django.conf import settings
from django.db.models import F, QuerySet, Sum
from django.utils import timezone

from accounts.access import visible_to
from accounts.models import UsageRecord, UsageStatus

from .models import ModelConfig
from .providers import ModelUnavailable


def model_config_list(*, enabled_only: bool = True, user=None, api_key=None) -> QuerySet[ModelConfig]:
    """Return model configs, the default first, then by display name.

    With ``user``: only those ``user`` may use (:func:`accounts.access.visible_to`, the one access
    rule of every path), and with ``api_key`` too (an :class:`~accounts.models.APIKey`): only those
    of them in the key's ``allowed_models`` when it lists any. Without ``user``: all of them, for
    operators' and system code (health, manage.py, the admin).
    """
    # The orchestrator is read during a turn, in async code that cannot load it lazily.
    configs = ModelConfig.objects.select_related("orchestrator")
    if enabled_only:
        configs = configs.filter(is_enabled=True)
    if user is not None or api_key is not None:
        configs = visible_to(configs, user=user if user is not None else api_key.user)
    if api_key is not None and api_key.allowed_models is not None:
        configs = configs.filter(slug__in=api_key.allowed_models)
    return configs


def model_config_get(*, slug: str | None = None, user=None, api_key=None) -> ModelConfig:
    """Return the enabled model ``slug``, or the default model when ``slug`` is empty.

    The default is ``LLM_DEFAULT_MODEL`` when that setting names an enabled model, otherwise the
    config marked ``is_default``. With ``user`` (and ``api_key``), only models they may use count
    (:func:`model_config_list`): a model they may not use is as unknown as a missing one, and the
    default is the first one they may use when the site's default is closed to them. Raise
    :class:`ModelUnavailable` when there is no such model.
    """
    configs = model_config_list(user=user, api_key=api_key)
    if slug:
        try:  # slugs are unique: no ordering needed (this runs on every request)
            return configs.get(slug=slug)
        except ModelConfig.DoesNotExist:
            raise ModelUnavailable(f"No enabled model {slug!r}.", status_code=400) from None
    config = None
    if settings.LLM_DEFAULT_MODEL:
        config = configs.filter(slug=settings.LLM_DEFAULT_MODEL).first()
    config = config or configs.filter(is_default=True).first() or configs.first()
    if config is None:
        if user is not None or api_key is not None:
            raise ModelUnavailable("No model is open to you. An operator can give you access in the admin.")
        raise ModelUnavailable("No model is enabled. An operator can enable one in the admin.")
    return config


def deployment_tokens_per_s(*, labels: list[str], hours: float = 1.0) -> dict[str, float | None]:
    """Return, per deployment label, its generation speed (tokens/s) over the last ``hours``, or None.

    From the usage records (database) of completed, uncached requests with timings: the sum of
    (completion tokens - 1) over the sum of seconds from the first token to the end of each stream,
    as ``manage.py models bench`` measures one run. None when no such request has a generation time.
    """
    since = timezone.now() - timedelta(hours=hours)
    rows = (
        UsageRecord.objects.filter(
            deployment__in=labels,
            created_at__gte=since,
            status=UsageStatus.COMPLETE,
            cached=False,
            ttft_ms__isnull=False,
            latency_ms__isnull=False,
            completion_tokens__gt=1,
        )
        .values("deployment")
        .annotate(tokens=Sum(F("completion_tokens") - 1), ms=Sum(F("latency_ms") - F("ttft_ms")))
    )
    figures: dict[str, float | None] = dict.fromkeys(labels)
    for row in rows:
        if row["ms"] and row["ms"] > 0:
            figures[row["deployment"]] = row["tokens"] / (row["ms"] / 1000)
    return figures
