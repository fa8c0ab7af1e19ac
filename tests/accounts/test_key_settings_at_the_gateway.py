"""A key's changed scope reaches the gateway once its cached copy expires (GATEWAY_CACHE_SECONDS), and
not before: the gateway trusts a key it looked up for that long (real PostgreSQL: the gateway reads the
database from a thread of its own)."""

from __future__ import annotations

import asyncio
import time
from typing import Any

from marketplace.accounts import services as account_services
from marketplace.catalog.models import InstanceType, ModelCard
from serving.gateway import directory
from serving.models import Deployment
from tests.conftest import make_user

TTL = 0.5


def test_a_narrowed_key_is_refused_at_the_gateway_once_its_cache_expires(
    transactional_catalog: None, settings: Any
) -> None:
    settings.SERVING_BACKEND = "kubernetes"
    organization = account_services.create_organization(slug="gw", name="Gateway", owner=make_user("gw"))
    card = ModelCard.objects.get(slug="llama-3.1-8b-instruct")
    instance = InstanceType.objects.get(slug="aws-g5-xlarge")
    for name in ("chat", "other"):
        Deployment.objects.create(
            organization=organization, name=name, model_card=card, instance_type=instance,
            backend="kubernetes", status="ready",
        )  # fmt: skip
    key, secret = account_services.create_api_key(
        organization=organization, name="k", created_by=None, expires_at=None
    )
    found = directory.Directory(ttl=TTL)

    async def may_call_other() -> bool:
        caller = await found.caller(f"Bearer {secret}")
        assert caller is not None
        return caller.may_call("other")

    assert asyncio.run(may_call_other())
    account_services.update_api_key(key, {"allowed_deployments": ["chat"], "requests_per_minute": 10})
    assert asyncio.run(may_call_other())  # still the cached copy
    time.sleep(TTL + 0.1)
    assert not asyncio.run(may_call_other())
