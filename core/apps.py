from django.apps import AppConfig


class CoreConfig(AppConfig):
    name = "core"
    verbose_name = "Core"

    def ready(self) -> None:
        # Every domain event is delivered to the webhook endpoints that want it (core.webhooks).
        from .events import event_emitted
        from .webhooks import webhooks_on_event

        event_emitted.connect(webhooks_on_event, dispatch_uid="core.webhooks")
