"""The catalog page's facets: several values per facet (OR within a facet, AND across facets), each option
with the number of cards it would show, and no option that would show none.

1. Every facet's selection becomes a filter in SQL (`facet_filters`); the page's cards are those that
   pass all of them, sorted and paginated by PostgreSQL.
2. Counts are disjunctive, as shops count them: a facet's options are counted over the cards that pass
   every *other* facet, so ticking a second task adds cards rather than emptying the list. They are
   counted in Python from one narrow query (the facet columns of the cards that pass the search and the
   single-valued filters), so the page costs one query for all the facets, not one per facet.
3. "Deployable here" is the platform's rule as a query: on the local backend a card must run on CPU
   (and a CPU instance type exist); on Kubernetes it must fit the widest GPU group of some instance type
   (ModelCardQuerySet.fitting, the rule fitting.why_not_here applies card by card).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from operator import itemgetter
from typing import Any

from django.conf import settings
from django.db.models import BooleanField, Case, Q, QuerySet, Value, When

from marketplace.catalog import choices
from marketplace.catalog.models import InstanceType, ModelCard
from marketplace.catalog.search import language_label
from marketplace.web.fitting import servable_q
from serving.choices import Backend

# Size buckets (billions of parameters, lower bound excluded, upper included); the API takes any range.
SIZES: dict[str, tuple[int, int | None, str]] = {
    "small": (0, 3, "Up to 3B"),
    "medium": (3, 15, "3B – 15B"),
    "large": (15, 80, "15B – 80B"),
    "huge": (80, None, "Over 80B"),
}
DEPLOYABLE = "yes"
COMMERCIAL_USE = dict(choices.CommercialUse.choices)
# The columns the counts read, in this order (see Facet.values).
COLUMNS = (
    "tasks", "languages", "domains", "modalities_in", "provider__slug", "provider__name",
    "license__identifier", "license__name", "license__commercial_use", "parameters", "deployable",
)  # fmt: skip
Row = tuple[Any, ...]


def size_bucket(parameters: int) -> str:
    billions = parameters / 1e9
    for key, (low, high, _) in SIZES.items():
        if billions > low and (high is None or billions <= high):
            return key
    return "small"


def _size_q(bucket: str) -> Q:
    low, high, _ = SIZES[bucket]
    q = Q(parameters__gt=low * 1_000_000_000)
    return q & Q(parameters__lte=high * 1_000_000_000) if high is not None else q


@dataclass
class Facet:
    name: str  # the query parameter
    label: str
    values: Callable[[Row], Iterable[str]]  # the values of one row
    option_label: Callable[[Row, str], str]  # asked once per value, with a row that has it
    filter: Callable[[list[str]], Q]
    # None: options ordered by their label; else this order.
    order: tuple[str, ...] | None = None


def _same(row: Row, value: str) -> str:
    return value


FACETS = [
    Facet(
        "deployable", "This platform", lambda row: (DEPLOYABLE,) if row[10] else (),
        lambda row, value: "Deployable here", lambda values: Q(deployable=True),
    ),
    Facet("task", "Task", itemgetter(0), _same, lambda values: Q(tasks__overlap=values), choices.TASKS),
    Facet(
        "provider", "Provider", lambda row: (row[4],), lambda row, value: row[5],
        lambda values: Q(provider__slug__in=values),
    ),
    Facet(
        "license", "License", lambda row: (row[6],), lambda row, value: row[7],
        lambda values: Q(license__identifier__in=values),
    ),
    Facet(
        "commercial_use", "Commercial use", lambda row: (row[8],),
        lambda row, value: str(COMMERCIAL_USE.get(value, value)),
        lambda values: Q(license__commercial_use__in=values), tuple(choices.CommercialUse.values),
    ),
    Facet(
        "language", "Language", itemgetter(1), lambda row, value: language_label(value),
        lambda values: Q(languages__overlap=values),
    ),
    Facet(
        "domain", "Domain", itemgetter(2), _same, lambda values: Q(domains__overlap=values), choices.DOMAINS
    ),
    Facet(
        "modality", "Input", itemgetter(3), _same, lambda values: Q(modalities_in__overlap=values),
        choices.MODALITIES_IN,
    ),
    Facet(
        "size", "Size", lambda row: (size_bucket(row[9]),), lambda row, value: SIZES[value][2],
        lambda values: _any(_size_q(value) for value in values), tuple(SIZES),
    ),
]  # fmt: skip
FACET_NAMES = [facet.name for facet in FACETS]
CLOSED_VOCABULARIES = {
    "deployable": (DEPLOYABLE,),
    "task": choices.TASKS,
    "commercial_use": tuple(choices.CommercialUse.values),
    "domain": choices.DOMAINS,
    "modality": choices.MODALITIES_IN,
    "size": tuple(SIZES),
}
OPEN_VOCABULARY_MAX_LENGTH = 64


def _any(conditions: Iterable[Q]) -> Q:
    combined = Q(pk__in=[])
    for condition in conditions:
        combined |= condition
    return combined


@dataclass
class Option:
    value: str
    label: str
    count: int
    selected: bool


@dataclass
class FacetResult:
    name: str
    label: str
    options: list[Option] = field(default_factory=list)

    @property
    def selected_count(self) -> int:
        return sum(1 for option in self.options if option.selected)


def check_selection(selection: dict[str, list[str]]) -> dict[str, list[str]]:
    """Errors by facet, in words: a value outside a closed vocabulary, or one too long to be a slug. A
    well-formed value that no card has (an unknown provider) simply matches nothing, and stays offered so
    it can be unticked."""
    errors: dict[str, list[str]] = {}
    for name, values in selection.items():
        allowed = CLOSED_VOCABULARIES.get(name)
        for value in values:
            if allowed is not None and value not in allowed:
                errors.setdefault(name, []).append(
                    f"“{value[:40]}” is not one of the choices ({', '.join(allowed)})."
                )
            elif len(value) > OPEN_VOCABULARY_MAX_LENGTH:
                errors.setdefault(name, []).append(
                    f"A value of at most {OPEN_VOCABULARY_MAX_LENGTH} characters."
                )
    return errors


def deployable_q(instance_types: list[InstanceType]) -> Q:
    """The cards this platform can run on at least one of `instance_types` (see the module docstring), of
    those the engine can serve at all (fitting.servable_q)."""
    if settings.SERVING_BACKEND == Backend.LOCAL:
        cpu = [instance for instance in instance_types if instance.gpu_count == 0]
        return Q(cpu_capable=True) & servable_q() if cpu else Q(pk__in=[])
    gpu = [instance for instance in instance_types if instance.gpu_count > 0]
    if not gpu:
        return Q(pk__in=[])
    widest = max(gpu, key=lambda instance: instance.tensor_parallel_memory_gb)
    return Q(pk__in=ModelCard.objects.fitting(widest).values("pk")) & servable_q()


def with_deployable(cards: QuerySet[ModelCard], instance_types: list[InstanceType]) -> QuerySet[ModelCard]:
    return cards.annotate(
        deployable=Case(
            When(deployable_q(instance_types), then=Value(True)),
            default=Value(False),
            output_field=BooleanField(),
        )
    )


def facet_filters(selection: dict[str, list[str]]) -> dict[str, Q]:
    """Each facet with a selection, as a filter on cards annotated by `with_deployable`."""
    return {facet.name: facet.filter(selection[facet.name]) for facet in FACETS if selection.get(facet.name)}


def counts(
    cards: QuerySet[ModelCard], selection: dict[str, list[str]], filters: dict[str, Q]
) -> list[FacetResult]:
    """Each facet's options with their disjunctive counts, over `cards` (annotated by `with_deployable`,
    before the facets' filters). One query."""
    chosen = {facet.name: set(selection.get(facet.name, [])) for facet in FACETS}
    flags = {
        f"passes_{name}": Case(When(q, then=Value(True)), default=Value(False)) for name, q in filters.items()
    }
    tallies: dict[str, Counter[str]] = {facet.name: Counter() for facet in FACETS}
    labels: dict[str, dict[str, str]] = {facet.name: {} for facet in FACETS}
    names = list(filters)
    for row in cards.annotate(**flags).values_list(*COLUMNS, *flags).order_by():
        failed = [name for name, passed in zip(names, row[len(COLUMNS) :], strict=True) if not passed]
        if len(failed) > 1:
            continue  # fails two facets: counted in none
        for facet in FACETS:
            if failed and failed[0] != facet.name:
                continue  # fails another facet: not counted here
            values = facet.values(row)
            tallies[facet.name].update(values)
            known = labels[facet.name]
            for value in values:
                if value not in known:
                    known[value] = facet.option_label(row, value)
    results = []
    for facet in FACETS:
        options = [
            Option(
                value,
                labels[facet.name].get(value, value),
                tallies[facet.name].get(value, 0),
                value in chosen[facet.name],
            )
            for value in set(tallies[facet.name]) | chosen[facet.name]
        ]
        if facet.order is not None:
            position = {value: index for index, value in enumerate(facet.order)}
            options.sort(key=lambda option: (position.get(option.value, len(position)), option.label))
        else:
            options.sort(key=lambda option: option.label.casefold())
        results.append(FacetResult(facet.name, facet.label, options))
    return results
