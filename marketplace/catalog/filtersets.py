from __future__ import annotations

from typing import Any

import django_filters
from django.db.models import QuerySet

from marketplace.catalog import choices, search
from marketplace.catalog.models import InstanceType, ModelCard, ModelCardQuerySet


def _vocabulary(values: tuple[str, ...]) -> list[tuple[str, str]]:
    return [(value, value) for value in values]


class StrictBooleanFilter(django_filters.TypedChoiceFilter):
    """`true` or `false`, and anything else is a 400 (django-filter's BooleanFilter ignores typos)."""

    def __init__(self, **kwargs: Any) -> None:
        kwargs.setdefault("choices", [("true", "true"), ("false", "false")])
        kwargs.setdefault("coerce", lambda value: value == "true")
        super().__init__(**kwargs)


class ModelCardFilterSet(django_filters.FilterSet):
    q = django_filters.CharFilter(method="filter_search", max_length=200, label="Free-text search")
    task = django_filters.ChoiceFilter(choices=_vocabulary(choices.TASKS), method="filter_contains")
    domain = django_filters.ChoiceFilter(choices=_vocabulary(choices.DOMAINS), method="filter_contains")
    modality = django_filters.ChoiceFilter(
        choices=_vocabulary(choices.MODALITIES_IN), method="filter_contains", label="Input modality"
    )
    language = django_filters.CharFilter(method="filter_contains", max_length=16)
    provider = django_filters.CharFilter(field_name="provider__slug", max_length=64)
    license = django_filters.CharFilter(field_name="license__identifier", max_length=64)
    parameters_min = django_filters.NumberFilter(method="filter_parameters", label="Parameters ≥ (billions)")
    parameters_max = django_filters.NumberFilter(method="filter_parameters", label="Parameters ≤ (billions)")
    context_length_min = django_filters.NumberFilter(field_name="context_length", lookup_expr="gte")
    context_length_max = django_filters.NumberFilter(field_name="context_length", lookup_expr="lte")
    cpu_capable = StrictBooleanFilter()
    # A card whose gating is not known matches neither `true` nor `false`.
    gated = StrictBooleanFilter()
    commercial_use = django_filters.ChoiceFilter(
        field_name="license__commercial_use",
        choices=choices.CommercialUse.choices,
        label="Commercial use (allowed, conditions, not-allowed)",
    )
    fits = django_filters.ModelChoiceFilter(
        queryset=InstanceType.objects.all(),
        to_field_name="slug",
        method="filter_fits",
        label="Fits instance type (slug)",
    )

    class Meta:
        model = ModelCard
        fields: list[str] = []

    _array_fields = {
        "task": "tasks",
        "domain": "domains",
        "modality": "modalities_in",
        "language": "languages",
    }

    def filter_search(self, queryset: ModelCardQuerySet, name: str, value: str) -> QuerySet[ModelCard]:
        """The catalog page's search (catalog.search), annotated with `search_rank`."""
        return search.search(queryset, value)

    def filter_contains(self, queryset: QuerySet[ModelCard], name: str, value: str) -> QuerySet[ModelCard]:
        return queryset.filter(**{f"{self._array_fields[name]}__contains": [value]})

    def filter_parameters(self, queryset: QuerySet[ModelCard], name: str, value: Any) -> QuerySet[ModelCard]:
        lookup = "gte" if name.endswith("_min") else "lte"
        return queryset.filter(**{f"parameters__{lookup}": int(value * 1_000_000_000)})

    def filter_fits(
        self, queryset: ModelCardQuerySet, name: str, value: InstanceType | None
    ) -> QuerySet[ModelCard]:
        return queryset.fitting(value) if value is not None else queryset


class InstanceTypeFilterSet(django_filters.FilterSet):
    provider = django_filters.ChoiceFilter(choices=_vocabulary(choices.INSTANCE_PROVIDERS))
    gpu_model = django_filters.CharFilter(max_length=100)
    gpu_count_min = django_filters.NumberFilter(field_name="gpu_count", lookup_expr="gte")
    fits = django_filters.ModelChoiceFilter(
        queryset=ModelCard.objects.all(),
        to_field_name="slug",
        method="filter_fits",
        label="Fits model (slug)",
    )

    class Meta:
        model = InstanceType
        fields: list[str] = []

    def filter_fits(self, queryset: Any, name: str, value: ModelCard | None) -> QuerySet[InstanceType]:
        return queryset.fitting(value) if value is not None else queryset
