from django.apps import AppConfig


class LearningConfig(AppConfig):
    name = "learning"
    label = "learning"
    verbose_name = "Learning from traffic"
