from pathlib import Path
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from marketplace.catalog.loader import DATA_DIR, CatalogError, read_catalog, write_catalog


class Command(BaseCommand):
    help = "Load the model catalog (licenses, instance types, providers, model cards) from YAML. Idempotent."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--path", type=Path, default=DATA_DIR, help="Folder holding the catalog YAML")
        parser.add_argument("--check", action="store_true", help="Validate only; write nothing")

    def handle(self, *args: Any, path: Path, check: bool, **options: Any) -> None:
        try:
            catalog = read_catalog(path)
        except CatalogError as error:
            raise CommandError(f"The catalog was not loaded; nothing was written.\n{error}") from None
        summary = (
            f"{catalog.card_count} model cards from {len(catalog.providers)} providers, "
            f"{len(catalog.instance_types)} instance types, {len(catalog.licenses)} licenses"
        )
        if check:
            self.stdout.write(f"Catalog is valid: {summary}.")
            return
        result = write_catalog(catalog)
        changes = ", ".join(
            [f"{n} {kind} created" for kind, n in result.created.items()]
            + [f"{n} {kind} updated" for kind, n in result.updated.items()]
        )
        self.stdout.write(self.style.SUCCESS(f"Loaded {summary} ({changes or 'no changes'})."))
