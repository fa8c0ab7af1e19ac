from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from serving.choices import DeploymentStatus
from serving.models import Deployment


class Command(BaseCommand):
    help = "Print the Kubernetes objects (YAML) the platform applies for a deployment, for review or GitOps."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("organization", help="organisation slug")
        parser.add_argument("name", help="deployment name")

    def handle(self, *args: Any, organization: str, name: str, **options: Any) -> None:
        from serving.api.views import render_manifests

        deployment = (
            Deployment.objects.select_related("organization", "model_card", "instance_type")
            .exclude(status=DeploymentStatus.DELETED)
            .filter(organization__slug=organization, name=name)
            .first()
        )
        if deployment is None:
            raise CommandError(f"No deployment '{name}' in organisation '{organization}'.")
        self.stdout.write(render_manifests(deployment), ending="")
