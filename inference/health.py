"""The ``model`` component of ``/health/ready/`` (registered with :mod:`core.health` in ``InferenceConfig.ready``)."""

from django.conf import settings

from .models import Provider
from .providers.llama_cpp import resolve_model_path
from .selectors import model_config_get
from .services import BUNDLED_MODEL


def check_model() -> str:
    """Check that the default model config exists and, for a local model, that its GGUF file is there.

    The model is not loaded and a remote server is not contacted: a probe every few seconds must
    stay cheap (and must not spend tokens).
    """
    config = model_config_get()
    if config.provider == Provider.LLAMA_CPP:
        model = config.model
        if model == BUNDLED_MODEL and settings.LLAMA_MODEL_PATH:
            model = settings.LLAMA_MODEL_PATH  # as inference.services.provider_for does
        resolve_model_path(model)
        return f"{config.slug}: model file found"
    if not config.base_url:
        raise ValueError(f"{config.slug}: no base URL")
    return f"{config.slug}: remote server, not contacted"
