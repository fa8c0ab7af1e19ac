from django.apps import AppConfig


class WebConfig(AppConfig):
    name = "marketplace.web"
    label = "web"

    def ready(self) -> None:
        # The platform's own system checks (a weak SECRET_KEY with DEBUG off is an error).
        from marketplace import checks  # noqa: F401
