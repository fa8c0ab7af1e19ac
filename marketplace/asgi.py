import os

from django.core.asgi import get_asgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "marketplace.settings")
django_application = get_asgi_application()

# After Django is set up: the invoke API's routes go straight to their views (serving/gateway/asgi.py).
from serving.gateway.asgi import GatewayFront  # noqa: E402

application = GatewayFront(django_application)
