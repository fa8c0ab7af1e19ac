from django.apps import AppConfig


class LearningConfig(AppConfig):
    name = "learning"
    label = "learning"
    verbose_name = "Learning from traffic"

    def ready(self) -> None:
        from learning import signals  # noqa: F401 (connects the receivers)
