import os
from typing import Any

from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand, CommandError
from django.db import transaction

from marketplace.accounts import services
from marketplace.accounts.choices import Role
from marketplace.accounts.models import Membership, Organization


class Command(BaseCommand):
    help = (
        "Create the demo organisation and a platform admin 'admin' (password from DEMO_ADMIN_PASSWORD). "
        "Idempotent: an existing admin keeps its password."
    )

    @transaction.atomic
    def handle(self, *args: Any, **options: Any) -> None:
        password = os.environ.get("DEMO_ADMIN_PASSWORD")
        if not password:
            raise CommandError("DEMO_ADMIN_PASSWORD is required to create the demo admin.")
        User = get_user_model()
        admin, created = User.objects.get_or_create(
            username="admin", defaults={"is_staff": True, "is_superuser": True, "email": "admin@example.com"}
        )
        if created:
            admin.set_password(password)
            admin.save()
        organization = Organization.objects.filter(slug="demo").first()
        if organization is None:
            organization = services.create_organization(slug="demo", name="Demo", owner=admin)
        Membership.objects.get_or_create(organization=organization, user=admin, defaults={"role": Role.OWNER})
        self.stdout.write(
            f"Demo organisation 'demo' and platform admin 'admin' {'created' if created else 'ready'}."
        )
