"""The catalog: who publishes models, the model cards, and the instance types they can run on."""

from __future__ import annotations

import datetime
import decimal
import hashlib
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from typing import TYPE_CHECKING

from django.conf import settings
from django.contrib.postgres.fields import ArrayField
from django.contrib.postgres.indexes import GinIndex
from django.contrib.postgres.search import SearchVectorField
from django.db import models
from django.db.models import Q, QuerySet
from django.utils import timezone

from marketplace.catalog import fits
from marketplace.catalog.choices import (
    POOLING_ROUTES,
    ROUTES,
    ROUTES_BY_TASK,
    UNSERVABLE_OUTPUTS,
    CommercialUse,
    CustomModelSource,
)

if TYPE_CHECKING:
    from marketplace.accounts.models import Organization


class Provider(models.Model):
    slug = models.SlugField(max_length=64, unique=True)
    name = models.CharField(max_length=200)
    url = models.URLField(blank=True)
    huggingface_org = models.CharField(max_length=100, blank=True)

    class Meta:
        ordering = ["name"]

    def __str__(self) -> str:
        return self.name

    def save(self, *args: object, **kwargs: object) -> None:
        super().save(*args, **kwargs)  # type: ignore[arg-type]
        self.models.refresh_search_vectors()  # its cards' documents hold the provider's name and slug


def compose_license_terms(name: str, url: str, text: str) -> str:
    return f"{name}\n{url}\n\n{text}" if url else f"{name}\n\n{text}"


class License(models.Model):
    """License terms shared by the cards that carry this license identifier."""

    identifier = models.CharField(max_length=64, unique=True)
    name = models.CharField(max_length=200)
    url = models.URLField(blank=True)
    text = models.TextField()
    commercial_use = models.CharField(
        max_length=16,
        choices=CommercialUse.choices,
        help_text="Whether the terms allow commercial use: yes, with conditions (e.g. a user cap or a "
        "registration), or no",
    )
    sha256 = models.CharField(max_length=64, editable=False)

    class Meta:
        ordering = ["identifier"]

    def __str__(self) -> str:
        return self.name

    def save(self, *args: object, **kwargs: object) -> None:
        self.sha256 = hashlib.sha256(self.text.encode()).hexdigest()
        super().save(*args, **kwargs)  # type: ignore[arg-type]
        self.cards.refresh_search_vectors()  # its cards' documents hold the license's identifier


class InstanceTypeQuerySet(QuerySet["InstanceType"]):
    def fitting(self, card: ModelCard) -> InstanceTypeQuerySet:
        """Instance types that hold the card at its shortest deployable context (see fits.place)."""
        gpu = Q(gpu_count__gt=0, tensor_parallel_memory_gb__gte=card.min_gpu_memory_gb)
        return self.filter(gpu | Q(gpu_count=0)) if card.cpu_capable else self.filter(gpu)


class InstanceType(models.Model):
    slug = models.SlugField(max_length=64, unique=True)
    name = models.CharField(max_length=100)
    provider = models.CharField(max_length=16)
    gpu_model = models.CharField(max_length=100, blank=True)
    gpu_product = models.CharField(max_length=100, blank=True)
    gpu_count = models.PositiveSmallIntegerField()
    gpu_memory_gb = models.PositiveIntegerField(help_text="Memory per GPU")
    vcpu = models.PositiveIntegerField()
    memory_gb = models.PositiveIntegerField()
    hourly_price_usd = models.DecimalField(max_digits=12, decimal_places=6)
    price_region = models.CharField(max_length=64, blank=True)
    price_as_of = models.DateField()
    price_source = models.CharField(max_length=500)
    price_is_estimate = models.BooleanField(
        default=False, help_text="True when the price is not read from a dated public price list"
    )
    node_labels = models.JSONField(default=dict, blank=True)
    # Derived: memory of the widest power-of-two tensor-parallel group, so "fits" is one indexed filter.
    tensor_parallel_memory_gb = models.PositiveIntegerField(default=0, editable=False)

    objects = InstanceTypeQuerySet.as_manager()

    class Meta:
        ordering = ["provider", "gpu_count", "name"]

    def __str__(self) -> str:
        return self.name

    def save(self, *args: object, **kwargs: object) -> None:
        self.tensor_parallel_memory_gb = fits.tensor_parallel_memory_gb(self.gpu_count, self.gpu_memory_gb)
        before = (
            InstanceType.objects.filter(pk=self.pk)
            .values_list("hourly_price_usd", "price_is_estimate")
            .first()
            if self.pk
            else None
        )
        super().save(*args, **kwargs)  # type: ignore[arg-type]
        if before != (decimal.Decimal(str(self.hourly_price_usd)), self.price_is_estimate):
            self.record_price(first=before is None)

    def record_price(self, *, first: bool) -> None:
        """Keep the price history in step with the catalog's price: an instance type's first price has
        always applied; a change the catalog makes later applies from now on, so past hours keep the price
        they ran at. (A platform admin's versions are added with serving.costs.add_price.)"""
        InstanceTypePrice.objects.get_or_create(
            instance_type=self,
            effective_from=PRICE_HISTORY_START if first else timezone.now(),
            defaults={
                "hourly_price_usd": self.hourly_price_usd,
                "source": self.price_source,
                "is_estimate": self.price_is_estimate,
            },
        )

    @property
    def total_gpu_memory_gb(self) -> int:
        return self.gpu_count * self.gpu_memory_gb


def card_routes(tasks: list[str], modalities_in: list[str]) -> tuple[str, ...]:
    """The one rule from a card's tasks to its invoke routes, in choices.ROUTES order.

    Translation is the one task whose route depends on the input: a speech model translates audio
    (audio.translations), a text model completes text."""
    routes: set[str] = set()
    for task in tasks:
        routes.update(ROUTES_BY_TASK.get(task, ()))
    if "translation" in tasks:
        routes.add("audio.translations" if "audio" in modalities_in else "completions")
    return tuple(route for route in ROUTES if route in routes)


def card_not_servable_reason(name: str, modalities_out: list[str], engine_unsupported: str) -> str:
    """Why the pinned engine cannot serve a card ("" when it can): an output it never produces, else the
    card's own stated gap."""
    for modality in modalities_out:
        if modality in UNSERVABLE_OUTPUTS:
            return f"{name} is not yet servable here: {UNSERVABLE_OUTPUTS[modality]}."
    if engine_unsupported:
        return f"{name} is not yet servable here: {engine_unsupported.rstrip('.')}."
    return ""


class ModelCardQuerySet(QuerySet["ModelCard"]):
    def fitting(self, instance_type: InstanceType) -> ModelCardQuerySet:
        if instance_type.gpu_count == 0:
            return self.filter(cpu_capable=True)
        return self.filter(min_gpu_memory_gb__lte=instance_type.tensor_parallel_memory_gb)

    def refresh_search_vectors(self) -> int:
        """Store each card's weighted search document (search.document) in `search_vector`, in one UPDATE;
        the number of cards. Saving a card does it for that card; bulk_create and update() do not. Inside
        `search_vectors_refreshed_once()` it does nothing: the block refreshes every card at its end."""
        from marketplace.catalog import search  # search reads this module's models

        if _search_vectors_deferred.get():
            return 0
        return self.update(search_vector=search.stored_document())


class CatalogCardManager(models.Manager.from_queryset(ModelCardQuerySet)):  # type: ignore[misc]
    """`ModelCard.objects`: the public catalog only. An organisation's custom models (cards with an
    `organization`) are reached through `visible_to`, or `ModelCard.every_card` where no person is asked
    (a deployment's own card, the search document): a query that forgets the tenant shows no private
    card rather than every organisation's."""

    def get_queryset(self) -> ModelCardQuerySet:
        return super().get_queryset().filter(organization__isnull=True)

    def visible_to(self, organizations: Organization | Iterable[Organization] | None) -> ModelCardQuerySet:
        """The public catalog and the custom models of `organizations` (one, several or a queryset)."""
        every: ModelCardQuerySet = ModelCard.every_card.all()
        if organizations is None:
            return every.filter(organization__isnull=True)
        if isinstance(organizations, models.Model):
            return every.filter(Q(organization__isnull=True) | Q(organization=organizations))
        return every.filter(Q(organization__isnull=True) | Q(organization__in=organizations))


_search_vectors_deferred: ContextVar[bool] = ContextVar("search_vectors_deferred", default=False)


@contextmanager
def search_vectors_refreshed_once() -> Iterator[None]:
    """Save many cards, providers and licenses, then store every card's search document in one UPDATE,
    instead of one UPDATE per save (loading the catalog saves some 250 rows)."""
    token = _search_vectors_deferred.set(True)
    try:
        yield
    finally:
        _search_vectors_deferred.reset(token)
    ModelCard.every_card.all().refresh_search_vectors()


class ModelCard(models.Model):
    slug = models.CharField(max_length=64, unique=True, help_text="Lowercase letters, digits, dots, hyphens")
    name = models.CharField(max_length=200)
    provider = models.ForeignKey(Provider, on_delete=models.PROTECT, related_name="models")
    family = models.CharField(max_length=100, blank=True)
    summary = models.TextField(blank=True)
    huggingface_repo = models.CharField(max_length=200)
    revision = models.CharField(max_length=40, blank=True)
    base_model = models.CharField(max_length=200, blank=True)
    pipeline_tag = models.CharField(max_length=64, blank=True)
    tasks = ArrayField(models.CharField(max_length=32), default=list)
    modalities_in = ArrayField(models.CharField(max_length=16), default=list)
    modalities_out = ArrayField(models.CharField(max_length=16), default=list)
    languages = ArrayField(models.CharField(max_length=16), default=list)
    domains = ArrayField(models.CharField(max_length=16), default=list)
    tags = ArrayField(models.CharField(max_length=64), default=list, blank=True)
    license = models.ForeignKey(License, on_delete=models.PROTECT, related_name="cards")
    license_name = models.CharField(max_length=200)
    license_url = models.URLField(blank=True)
    # SHA-256 of `license_terms`: what a subscription must have accepted to be in force.
    license_sha256 = models.CharField(max_length=64, default="", editable=False)
    parameters = models.BigIntegerField()
    active_parameters = models.BigIntegerField(null=True, blank=True)
    context_length = models.PositiveIntegerField()
    dtype = models.CharField(max_length=16, blank=True, help_text="Of the released weights, where known")
    # None: not known whether the Hub asks users to accept terms before download (never read as "no").
    gated = models.BooleanField(null=True, blank=True)
    cpu_capable = models.BooleanField(default=False)
    # From the model's config.json: what sizes the KV cache (fits.py). None on encoder cards.
    num_hidden_layers = models.PositiveSmallIntegerField(null=True, blank=True)
    num_key_value_heads = models.PositiveSmallIntegerField(null=True, blank=True)
    head_dim = models.PositiveSmallIntegerField(null=True, blank=True)
    kv_latent_dim = models.PositiveSmallIntegerField(
        null=True, blank=True, help_text="Multi-head latent attention: values cached per layer and token"
    )
    gpu_memory_gb = models.PositiveIntegerField(help_text="GPU memory needed at the default context")
    min_gpu_memory_gb = models.PositiveIntegerField(
        default=0, help_text="GPU memory needed at the shortest deployable context: what `fits` compares"
    )
    gpu_memory_stated = models.BooleanField(
        default=False, help_text="True when the card states the memory; else it is computed"
    )
    embedding_dimensions = models.PositiveIntegerField(null=True, blank=True)
    release_date = models.DateField(null=True, blank=True)
    engine_unsupported = models.TextField(
        blank=True,
        help_text="Why the pinned engine cannot serve this model although it could serve its kind "
        "(an architecture it lacks); empty when it can",
    )
    engine_defaults = models.JSONField(default=dict, blank=True)
    # Lower-cased name, repo, family, provider, summary and tags: what free-text search looks in.
    search_text = models.TextField(default="", editable=False)
    # The weighted full-text document search.py matches and ranks (GIN-indexed), kept by save().
    search_vector = SearchVectorField(null=True, editable=False)
    updated_at = models.DateTimeField(auto_now=True)
    # Set on an organisation's custom model (see CustomModel): only that organisation sees the card.
    organization = models.ForeignKey(
        "accounts.Organization",
        null=True,
        blank=True,
        on_delete=models.CASCADE,
        related_name="custom_cards",
        help_text="Empty for the public catalog; else the one organisation whose custom model this is",
    )

    objects = CatalogCardManager()
    every_card = ModelCardQuerySet.as_manager()

    class Meta:
        ordering = ["name"]
        base_manager_name = "every_card"
        indexes = [
            GinIndex(fields=["tasks"], name="card_tasks_gin"),
            GinIndex(fields=["languages"], name="card_languages_gin"),
            GinIndex(fields=["domains"], name="card_domains_gin"),
            GinIndex(fields=["search_text"], name="card_search_trgm", opclasses=["gin_trgm_ops"]),
            GinIndex(fields=["search_vector"], name="card_search_vector_gin"),
            models.Index(fields=["name"], name="card_name"),
            models.Index(fields=["parameters"], name="card_parameters"),
            models.Index(fields=["context_length"], name="card_context_length"),
            models.Index(fields=["gpu_memory_gb"], name="card_gpu_memory"),
            models.Index(fields=["min_gpu_memory_gb"], name="card_min_gpu_memory"),
        ]

    def __str__(self) -> str:
        return self.name

    def save(self, *args: object, **kwargs: object) -> None:
        self.search_text = self.compose_search_text()
        self.license_sha256 = hashlib.sha256(self.license_terms.encode()).hexdigest()
        super().save(*args, **kwargs)  # type: ignore[arg-type]
        ModelCard.every_card.filter(pk=self.pk).refresh_search_vectors()

    @property
    def is_embedding(self) -> bool:
        """Serves vectors, not chat: no playground, and the embeddings route."""
        return "embedding" in self.tasks

    @property
    def not_servable_reason(self) -> str:
        """Why no deployment of this card can be served here, in words for a person; "" when it can."""
        return card_not_servable_reason(self.name, self.modalities_out, self.engine_unsupported)

    @property
    def servable(self) -> bool:
        return not self.not_servable_reason

    @property
    def routes(self) -> tuple[str, ...]:
        """The invoke routes a deployment of this card serves (choices.ROUTES names); none when the
        engine cannot serve the card."""
        return card_routes(self.tasks, self.modalities_in) if self.servable else ()

    @property
    def uses_pooling(self) -> bool:
        """Served by vLLM's pooling runner (embeddings, rerank, score), not by generation."""
        return bool(set(self.routes) & POOLING_ROUTES)

    @property
    def parameters_billions(self) -> float:
        return round(self.parameters / 1e9, 3)

    @property
    def commercial_use(self) -> str:
        return self.license.commercial_use

    @property
    def facts(self) -> fits.ModelFacts:
        """What the memory estimate needs of this card (see fits.py)."""
        return fits.ModelFacts(
            parameters=self.parameters,
            serving_dtype=self.engine_defaults.get("dtype") or "auto",
            context_length=self.context_length,
            default_max_model_len=self.engine_defaults.get("max_model_len"),
            layers=self.num_hidden_layers,
            kv_heads=self.num_key_value_heads,
            head_dim=self.head_dim,
            latent_dim=self.kv_latent_dim,
            stated_gpu_memory_gb=self.gpu_memory_gb if self.gpu_memory_stated else None,
            cpu_capable=self.cpu_capable,
        )

    def placement(
        self,
        instance_type: InstanceType,
        *,
        max_model_len: int | None = None,
        tensor_parallel_size: int | None = None,
    ) -> fits.Placement:
        """On how many GPUs of `instance_type`, and at what max model length, this model runs."""
        return fits.place(
            self.facts,
            instance_type.gpu_count,
            instance_type.gpu_memory_gb,
            max_model_len=max_model_len,
            tensor_parallel_size=tensor_parallel_size,
        )

    @property
    def license_terms(self) -> str:
        """The text a subscriber accepts: the card's own license name and link, then the terms."""
        return compose_license_terms(self.license_name, self.license_url, self.license.text)

    def compose_search_text(self) -> str:
        parts = [self.name, self.slug, self.huggingface_repo, self.family, self.summary, *self.tags]
        parts += [self.provider.name, self.provider.slug, self.license.identifier]
        return " ".join(part for part in parts if part).lower()


# Before any recorded change, an instance type's first known price is taken to have always applied: no
# metered hour predates the platform (serving.api.usage.FIRST_DAY is the same floor).
PRICE_HISTORY_START = datetime.datetime(2000, 1, 1, tzinfo=datetime.UTC)


class InstanceTypePrice(models.Model):
    """One version of an instance type's hourly price. The version in force for a metered hour is the
    latest whose `effective_from` is at or before the hour's start (serving.costs prices hours with it).

    Versions are added, never edited, so past costs can be explained: a platform admin adds one through
    serving.costs.add_price (REST or admin), and the catalog loader's price changes add one too
    (InstanceType.save), effective from the moment they are loaded.
    """

    instance_type = models.ForeignKey(InstanceType, on_delete=models.CASCADE, related_name="prices")
    hourly_price_usd = models.DecimalField(max_digits=12, decimal_places=6)
    effective_from = models.DateTimeField()
    source = models.CharField(max_length=500, help_text="Where the price comes from: a URL or a name")
    is_estimate = models.BooleanField(
        default=False, help_text="True when the price is not read from a dated public price list"
    )
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["instance_type", "-effective_from"]
        constraints = [
            models.UniqueConstraint(
                fields=["instance_type", "effective_from"], name="one_price_per_instance_type_and_time"
            )
        ]

    def __str__(self) -> str:
        return (
            f"{self.instance_type_id}: ${self.hourly_price_usd}/h from {self.effective_from:%Y-%m-%d %H:%M}"
        )


class CustomModel(models.Model):
    """An organisation's own model: a private, deployable card (`card`, whose `organization` is set) and
    where its weights come from. Registration (catalog.custom_models) reads the weights' config.json and
    safetensors headers, or the adapter's adapter_config.json, and fills the card from them; `facts`
    keeps what was read, for the model's page."""

    organization = models.ForeignKey(
        "accounts.Organization", on_delete=models.CASCADE, related_name="custom_models"
    )
    name = models.CharField(max_length=40, help_text="Lowercase letters, digits and hyphens")
    card = models.OneToOneField(ModelCard, on_delete=models.PROTECT, related_name="custom_model")
    source = models.CharField(max_length=16, choices=CustomModelSource.choices)
    # hub: the repository and its pinned commit; path: a folder of Hugging Face-format weights.
    huggingface_repo = models.CharField(max_length=200, blank=True)
    revision = models.CharField(max_length=40, blank=True)
    path = models.CharField(max_length=500, blank=True)
    # adapter: the key of its files' archive in the platform's object store (what a cluster's engines fetch).
    archive_key = models.CharField(max_length=300, blank=True, editable=False)
    # store: an S3-compatible folder (s3://bucket/prefix/), the store's endpoint ("" for AWS S3) and region,
    # and the organisation's own read key, its secret encrypted (marketplace.accounts.crypto), never shown.
    store_uri = models.CharField(max_length=1100, blank=True)
    store_endpoint_url = models.CharField(max_length=200, blank=True)
    store_region = models.CharField(max_length=64, blank=True)
    store_access_key_id = models.CharField(max_length=128, blank=True)
    store_secret_encrypted = models.TextField(blank=True, editable=False)
    # adapter: the model it runs on (a catalog card or another custom model's card), its rank and modules.
    base = models.ForeignKey(
        ModelCard, null=True, blank=True, on_delete=models.PROTECT, related_name="adapters"
    )
    lora_rank = models.PositiveIntegerField(null=True, blank=True)
    target_modules = ArrayField(models.CharField(max_length=100), default=list, blank=True)
    architecture = models.CharField(max_length=100, blank=True)
    # A private repository's access token, encrypted (marketplace.accounts.crypto); never shown again.
    hf_token_encrypted = models.TextField(blank=True, editable=False)
    facts = models.JSONField(default=dict, blank=True)
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["name"]
        constraints = [
            models.UniqueConstraint(fields=["organization", "name"], name="one_custom_model_per_name"),
        ]

    def __str__(self) -> str:
        return f"{self.organization_id}/{self.name}"

    @property
    def weights(self) -> str:
        """Where the weights are, in words: the repository at its commit, the folder, or the adapter."""
        if self.source == CustomModelSource.HUB:
            return f"{self.huggingface_repo}@{self.revision}"
        if self.source == CustomModelSource.STORE:
            return self.store_uri
        return self.path
