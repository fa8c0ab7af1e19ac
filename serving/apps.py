from django.apps import AppConfig


class ServingConfig(AppConfig):
    name = "serving"
    label = "serving"
    verbose_name = "Serving"

    def ready(self) -> None:
        from serving import usage_days  # noqa: F401 (connects the roll-up's deletion receivers)
