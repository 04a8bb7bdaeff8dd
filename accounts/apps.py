from django.apps import AppConfig


class AccountsConfig(AppConfig):
    name = "accounts"
    verbose_name = "Accounts"

    def ready(self) -> None:
        # drf-spectacular finds an extension by subclassing: importing the module registers it.
        from . import schema  # noqa: F401
