from django.apps import AppConfig

from core.health import readiness_check_register


class InferenceConfig(AppConfig):
    name = "inference"
    verbose_name = "Inference"

    def ready(self) -> None:
        # Imported here: the check reads models, which cannot be imported before the app registry is ready.
        from .health import check_model

        readiness_check_register(name="model", check=check_model)
