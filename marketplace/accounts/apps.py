from django.apps import AppConfig


class AccountsConfig(AppConfig):
    name = "marketplace.accounts"
    label = "accounts"

    def ready(self) -> None:
        from marketplace.accounts import signals  # noqa: F401 (connects the receivers)
