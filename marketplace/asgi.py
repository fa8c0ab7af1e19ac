import gc
import os

from django.core.asgi import get_asgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "marketplace.settings")
django_application = get_asgi_application()

# After Django is set up: the invoke API's routes go straight to their views (serving/gateway/asgi.py).
from serving.gateway.asgi import GatewayFront  # noqa: E402

application = GatewayFront(django_application)

# What is loaded by now (Django, DRF, every view through the URLconf) lives as long as the process. Frozen,
# it stays out of the cyclic collector's full passes, which otherwise walk all of it every few dozen
# catalog pages and set the API's p99 (bench/catalog.py).
from django.urls import get_resolver  # noqa: E402

get_resolver().url_patterns  # noqa: B018 (imports every view now rather than on the first request)
gc.collect()
gc.freeze()
