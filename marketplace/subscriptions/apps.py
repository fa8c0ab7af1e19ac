from django.apps import AppConfig


class SubscriptionsConfig(AppConfig):
    name = "marketplace.subscriptions"
    label = "subscriptions"
