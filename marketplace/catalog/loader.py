"""Reads the catalog YAML, validates all of it, then writes it in one transaction.

1. Parse and validate every file (licenses, instance types, one file per provider) into plain
   records. Any error stops here, naming the file, the card and the field; nothing is written.
2. Check what spans files: unique slugs, and every card's license known.
3. In one transaction, upsert licenses, instance types, providers and cards by their natural keys,
   so re-running updates in place and never duplicates.
"""

from __future__ import annotations

import datetime
import hashlib
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from django.db import transaction
from pydantic import BaseModel, ConfigDict, Field, StringConstraints, ValidationError, field_validator

from marketplace.catalog import choices, fits
from marketplace.catalog.models import (
    InstanceType,
    License,
    ModelCard,
    Provider,
    compose_license_terms,
    search_vectors_refreshed_once,
)

DATA_DIR = Path(__file__).resolve().parent / "data"

# Dots are allowed because model names carry versions ("llama-3.1-8b-instruct").
CardSlug = Annotated[str, StringConstraints(pattern=r"^[a-z0-9]+([.-][a-z0-9]+)*$", max_length=64)]
Slug = Annotated[str, StringConstraints(pattern=r"^[a-z0-9]+(-[a-z0-9]+)*$", max_length=64)]
Task = Literal[choices.TASKS]  # type: ignore[valid-type]
Domain = Literal[choices.DOMAINS]  # type: ignore[valid-type]
ModalityIn = Literal[choices.MODALITIES_IN]  # type: ignore[valid-type]
ModalityOut = Literal[choices.MODALITIES_OUT]  # type: ignore[valid-type]
Dtype = Literal[choices.DTYPES]  # type: ignore[valid-type]
LanguageCode = Annotated[str, StringConstraints(pattern=r"^[a-z]{2,3}(-[A-Za-z0-9]+)?$")]


class CatalogError(Exception):
    """The catalog data is invalid. The message names the file, the entry and the field."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)


class ProviderRecord(_Strict):
    slug: Slug
    name: str = Field(min_length=1, max_length=200)
    url: str = ""
    huggingface_org: str = ""


class EngineDefaults(_Strict):
    max_model_len: int | None = Field(default=None, ge=128)
    max_num_seqs: int | None = Field(default=None, ge=1, le=4096)
    enable_prefix_caching: bool | None = None
    trust_remote_code: bool | None = None
    runner: Literal["generate", "pooling"] | None = None
    tokenizer_mode: Literal["auto", "slow", "mistral"] | None = None
    quantization: str | None = None
    enable_auto_tool_choice: bool | None = None
    tool_call_parser: str | None = None
    dtype: Dtype | None = None


class CardRecord(_Strict):
    slug: CardSlug
    name: str = Field(min_length=1, max_length=200)
    family: str = ""
    summary: str = ""
    huggingface_repo: Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")]
    revision: Annotated[str, StringConstraints(pattern=r"^[0-9a-f]{40}$")] | None = None
    base_model: str | list[str] | None = None
    pipeline_tag: str = ""
    tasks: list[Task] = Field(min_length=1)
    modalities_in: list[ModalityIn] = Field(min_length=1)
    modalities_out: list[ModalityOut] = Field(min_length=1)
    languages: list[LanguageCode] = []  # empty when the card names none
    domains: list[Domain] = Field(min_length=1)
    license: str = Field(min_length=1, max_length=64)
    license_name: str = Field(min_length=1)
    license_url: str = ""
    tags: list[str] = []
    parameters: int = Field(gt=0)
    active_parameters: int | None = Field(default=None, gt=0)
    context_length: int = Field(gt=0)
    dtype: Dtype | None = None
    # Required, so a card never reads as "not gated" by omission; null says "not known".
    gated: bool | None
    cpu_capable: bool = False
    # config.json facts that size the KV cache: required on every card that generates text.
    num_hidden_layers: int | None = Field(default=None, gt=0, le=1000)
    num_key_value_heads: int | None = Field(default=None, gt=0, le=1000)
    head_dim: int | None = Field(default=None, gt=0, le=4096)
    kv_latent_dim: int | None = Field(default=None, gt=0, le=16384)
    gpu_memory_gb: int | None = Field(default=None, gt=0)
    embedding_dimensions: int | None = Field(default=None, gt=0)
    release_date: datetime.date | None = None
    # Why the pinned engine cannot serve a model of a kind it otherwise serves (an architecture it lacks):
    # the card then shows "not yet servable here" with it, and deploying it is refused.
    engine_unsupported: str = Field(default="", max_length=300)
    engine_defaults: EngineDefaults = EngineDefaults()

    @field_validator("base_model")
    @classmethod
    def _first_base_model(cls, value: str | list[str] | None) -> str | None:
        if isinstance(value, list):
            return value[0] if value else None
        return value


class ProviderFile(_Strict):
    provider: ProviderRecord
    models: list[CardRecord] = Field(min_length=1)


class InstanceTypeRecord(_Strict):
    slug: Slug
    name: str = Field(min_length=1, max_length=100)
    provider: Literal[choices.INSTANCE_PROVIDERS]  # type: ignore[valid-type]
    gpu_model: str
    gpu_product: str = ""
    gpu_count: int = Field(ge=0, le=64)
    gpu_memory_gb: int = Field(ge=0)
    vcpu: int = Field(gt=0)
    memory_gb: int = Field(gt=0)
    hourly_price_usd: Decimal = Field(ge=0, max_digits=12, decimal_places=6)
    price_region: str = ""
    price_as_of: datetime.date
    price_source: str = Field(min_length=1)
    price_is_estimate: bool
    node_labels: dict[str, str] = {}


class InstanceTypesFile(_Strict):
    instance_types: list[InstanceTypeRecord] = Field(min_length=1)


class LicenseRecord(_Strict):
    name: str = Field(min_length=1)
    url: str = ""
    text: str = Field(min_length=1)
    commercial_use: Literal[tuple(choices.CommercialUse.values)]  # type: ignore[valid-type]


class LicensesFile(_Strict):
    licenses: dict[str, LicenseRecord] = Field(min_length=1)


@dataclass
class Catalog:
    licenses: dict[str, LicenseRecord] = field(default_factory=dict)
    instance_types: list[InstanceTypeRecord] = field(default_factory=list)
    providers: list[ProviderFile] = field(default_factory=list)

    @property
    def card_count(self) -> int:
        return sum(len(p.models) for p in self.providers)


@dataclass
class LoadResult:
    created: dict[str, int]
    updated: dict[str, int]


def _describe(error: ValidationError, path: str, data: Any, entry_key: str) -> str:
    """One line per problem: `file: card 'slug': field 'x': message`."""
    lines = []
    for problem in error.errors():
        location = list(problem["loc"])
        where = ""
        if len(location) >= 2 and location[0] == entry_key and isinstance(location[1], int):
            try:
                slug = data[entry_key][location[1]].get("slug", f"#{location[1] + 1}")
            except (KeyError, IndexError, TypeError, AttributeError):
                slug = f"#{location[1] + 1}"
            noun = "card" if entry_key == "models" else "instance type"
            where = f"{noun} '{slug}': "
            location = location[2:]
        elif len(location) >= 2 and location[0] == "licenses":
            where = f"license '{location[1]}': "
            location = location[2:]
        field_name = ".".join(str(part) for part in location) or entry_key
        lines.append(f"{path}: {where}field '{field_name}': {problem['msg']}")
    return "\n".join(lines)


def _read_yaml(path: Path, root: Path) -> Any:
    name = str(path.relative_to(root))
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        raise CatalogError(f"{name}: not valid YAML: {exc}") from None
    if not isinstance(data, dict):
        raise CatalogError(f"{name}: expected a mapping at the top of the file")
    return data


def read_catalog(root: Path = DATA_DIR) -> Catalog:
    """Parse and validate the whole catalog under `root`. Raises CatalogError naming every problem."""
    catalog = Catalog()
    problems: list[str] = []

    def parse(model: type[BaseModel], path: Path, entry_key: str) -> Any:
        name = str(path.relative_to(root))
        try:
            data = _read_yaml(path, root)
            return model.model_validate(data)
        except CatalogError as exc:
            problems.append(str(exc))
        except ValidationError as exc:
            problems.append(_describe(exc, name, data, entry_key))
        return None

    for required in ("licenses.yaml", "instance_types.yaml"):
        if not (root / required).is_file():
            raise CatalogError(f"{required}: missing from {root.name}/")
    licenses = parse(LicensesFile, root / "licenses.yaml", "licenses")
    if licenses:
        catalog.licenses = licenses.licenses
    instance_types = parse(InstanceTypesFile, root / "instance_types.yaml", "instance_types")
    if instance_types:
        catalog.instance_types = instance_types.instance_types
    for path in sorted((root / "models").glob("*.yaml")):
        provider_file = parse(ProviderFile, path, "models")
        if provider_file:
            catalog.providers.append(provider_file)
            if path.stem != provider_file.provider.slug:
                problems.append(
                    f"{path.relative_to(root)}: field 'provider.slug': '{provider_file.provider.slug}' "
                    f"must match the file name '{path.stem}'"
                )
    if problems:
        raise CatalogError("\n".join(problems))
    _check_across_files(catalog, problems)
    if problems:
        raise CatalogError("\n".join(problems))
    return catalog


# The Hub's catch-all identifier: a card must name its publisher's own terms instead.
GENERIC_LICENSE = "other"


def _has_kv_facts(card: CardRecord) -> bool:
    return card.num_hidden_layers is not None and (
        card.kv_latent_dim is not None or (card.num_key_value_heads is not None and card.head_dim is not None)
    )


def _check_across_files(catalog: Catalog, problems: list[str]) -> None:
    seen_cards: dict[str, str] = {}
    for provider_file in catalog.providers:
        name = f"models/{provider_file.provider.slug}.yaml"
        for card in provider_file.models:
            if card.slug in seen_cards:
                problems.append(
                    f"{name}: card '{card.slug}': field 'slug': also used in {seen_cards[card.slug]}"
                )
            seen_cards[card.slug] = name
            if card.license not in catalog.licenses:
                problems.append(
                    f"{name}: card '{card.slug}': field 'license': '{card.license}' is not in licenses.yaml"
                )
            if card.license == GENERIC_LICENSE:
                problems.append(
                    f"{name}: card '{card.slug}': field 'license': '{GENERIC_LICENSE}' hides the publisher's "
                    "terms; add them to licenses.yaml under their own identifier and use that"
                )
            if "text" in card.modalities_out and not _has_kv_facts(card):
                problems.append(
                    f"{name}: card '{card.slug}': field 'num_hidden_layers': a model that generates text "
                    "needs num_hidden_layers with num_key_value_heads and head_dim (or kv_latent_dim) from "
                    "its config.json, to size its KV cache"
                )
            if card.cpu_capable and card.parameters > 2_000_000_000:
                problems.append(
                    f"{name}: card '{card.slug}': field 'cpu_capable': a model of "
                    f"{card.parameters / 1e9:.1f}B parameters is too large to serve on CPU here"
                )
    seen_types: set[str] = set()
    for instance_type in catalog.instance_types:
        if instance_type.slug in seen_types:
            problems.append(
                f"instance_types.yaml: instance type '{instance_type.slug}': field 'slug': used twice"
            )
        seen_types.add(instance_type.slug)
        if instance_type.gpu_count > 0 and instance_type.gpu_memory_gb == 0:
            problems.append(
                f"instance_types.yaml: instance type '{instance_type.slug}': field 'gpu_memory_gb': "
                "must be above 0 when the instance has GPUs"
            )


def card_facts(card: CardRecord) -> fits.ModelFacts:
    return fits.ModelFacts(
        parameters=card.parameters,
        serving_dtype=card.engine_defaults.dtype or "auto",
        context_length=card.context_length,
        default_max_model_len=card.engine_defaults.max_model_len,
        layers=card.num_hidden_layers,
        kv_heads=card.num_key_value_heads,
        head_dim=card.head_dim,
        latent_dim=card.kv_latent_dim,
        stated_gpu_memory_gb=card.gpu_memory_gb,
        cpu_capable=card.cpu_capable,
    )


def card_gpu_memory_gb(card: CardRecord) -> int:
    """GPU memory the card needs at its default context."""
    return fits.estimate(card_facts(card)).needed_gb


def card_min_gpu_memory_gb(card: CardRecord) -> int:
    """GPU memory the card needs at its shortest deployable context: what `fits` compares."""
    facts = card_facts(card)
    return fits.estimate(facts, facts.min_context).needed_gb


def _upsert(model: type[Any], lookup: dict[str, Any], values: dict[str, Any], counts: LoadResult) -> Any:
    """update_or_create that counts, and saves only when something changed (so re-runs are cheap)."""
    kind = model._meta.model_name
    instance = model.objects.filter(**lookup).first()
    if instance is None:
        instance = model(**lookup, **values)
        instance.save()
        counts.created[kind] = counts.created.get(kind, 0) + 1
        return instance
    changed = [name for name, value in values.items() if getattr(instance, name) != value]
    if changed:
        for name in changed:
            setattr(instance, name, values[name])
        instance.save()
        counts.updated[kind] = counts.updated.get(kind, 0) + 1
    return instance


@transaction.atomic
def write_catalog(catalog: Catalog) -> LoadResult:
    with search_vectors_refreshed_once():
        return _write_catalog(catalog)


def _write_catalog(catalog: Catalog) -> LoadResult:
    counts = LoadResult(created={}, updated={})
    licenses = {
        identifier: _upsert(License, {"identifier": identifier}, rec.model_dump(), counts)
        for identifier, rec in catalog.licenses.items()
    }
    for rec in catalog.instance_types:
        _upsert(InstanceType, {"slug": rec.slug}, rec.model_dump(exclude={"slug"}), counts)
    for provider_file in catalog.providers:
        p = provider_file.provider
        provider = _upsert(Provider, {"slug": p.slug}, p.model_dump(exclude={"slug"}), counts)
        for card in provider_file.models:
            values = card.model_dump(
                exclude={"slug", "license", "engine_defaults", "revision", "base_model", "gpu_memory_gb"}
            )
            values.update(
                provider=provider,
                license=licenses[card.license],
                revision=card.revision or "",
                dtype=card.dtype or "",
                base_model=card.base_model or "",
                engine_defaults=card.engine_defaults.model_dump(exclude_none=True),
                gpu_memory_gb=card_gpu_memory_gb(card),
                min_gpu_memory_gb=card_min_gpu_memory_gb(card),
                gpu_memory_stated=card.gpu_memory_gb is not None,
                # Included so that a change of license text alone counts as a change of the card.
                license_sha256=hashlib.sha256(
                    compose_license_terms(
                        card.license_name, card.license_url, catalog.licenses[card.license].text
                    ).encode()
                ).hexdigest(),
            )
            _upsert(ModelCard, {"slug": card.slug}, values, counts)
    return counts


def load_catalog(root: Path = DATA_DIR) -> LoadResult:
    return write_catalog(read_catalog(root))
