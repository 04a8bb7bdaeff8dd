from django.apps import AppConfig


class AccountsConfig(AppConfig):
    name = "accounts"
    verbose_name = "Accounts"

    def ready(self) -> None:
        # drf-spectacular finds an extension by subclassing: importing the module registers it.
        # Open WebSockets close when their user's rights change, by any path (accounts.signals).
        # Single sign-on syncs a user's groups at every login (accounts.sso's receiver).
        from . import schema, signals, sso  # noqa: F401
