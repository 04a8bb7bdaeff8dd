"""Reads for model configs."""

from django.conf import settings
from django.db.models import QuerySet

from .models import ModelConfig
from .providers import ModelUnavailable


def model_config_list(*, enabled_only: bool = True) -> QuerySet[ModelConfig]:
    """Return model configs, the default first, then by display name."""
    # The orchestrator is read during a turn, in async code that cannot load it lazily.
    configs = ModelConfig.objects.select_related("orchestrator")
    return configs.filter(is_enabled=True) if enabled_only else configs


def model_config_get(*, slug: str | None = None) -> ModelConfig:
    """Return the enabled model ``slug``, or the default model when ``slug`` is empty.

    The default is ``LLM_DEFAULT_MODEL`` when that setting names an enabled model, otherwise the
    config marked ``is_default``. Raise :class:`ModelUnavailable` when there is no such model.
    """
    configs = model_config_list()
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
        raise ModelUnavailable("No model is enabled. An operator can enable one in the admin.")
    return config
