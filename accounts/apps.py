from django.apps import AppConfig


class AccountsConfig(AppConfig):
    name = "accounts"
    verbose_name = "Accounts"

    def ready(self) -> None:
        # drf-spectacular finds an extension by subclassing: importing the module registers it.
        # Open WebSockets close when their user's rights change, by any path (accounts.signals).
        from . import schema, signals  # noqa: F401
