"""Training data for router tests with a known ground truth, stored as a real dataset and a finished
evaluation of two deployments:

- "small" (cheap: 1 USD an hour) answers arithmetic right and essays wrong;
- "large" (10 USD an hour) answers both right.
Both spend the same tokens and time per item, so the large one costs ten times as much per call.
"""

from __future__ import annotations

import datetime
import random
from dataclasses import dataclass
from typing import Any

from django.utils import timezone

from learning import datasets
from learning.choices import DatasetSource, EvaluationStatus
from learning.models import Dataset, Evaluation, EvaluationItem
from learning.storage import ObjectStore
from marketplace.accounts.models import Organization
from tests.learning.conftest import make_deployment

TOPICS = [
    "the sea", "medieval castles", "the french revolution", "climate policy", "jazz music", "volcanoes",
    "the roman empire", "honey bees", "space travel", "ancient egypt", "coffee farming", "glaciers",
    "the printing press", "chess openings", "rain forests", "electric cars", "the silk road", "tea",
]  # fmt: skip
ESSAY = ["Write an essay about {t} and its history.", "Compose a long essay on {t}, with sources.",
         "Explain in depth the story of {t} in an essay."]  # fmt: skip
SUMS = [
    "What is {a} plus {b}?",
    "Add {a} and {b}.",
    "Compute {a} + {b}, please.",
    "How much is {a} plus {b}?",
]
HOURLY = {"small": 1.0, "large": 10.0}


def prompts(count: int, arithmetic_share: float = 0.6, seed: int = 7) -> list[tuple[str, bool]]:
    """(prompt, is_arithmetic), distinct prompts."""
    rng = random.Random(seed)
    found: dict[str, bool] = {}
    while len(found) < count:
        if rng.random() < arithmetic_share:
            text = rng.choice(SUMS).format(a=rng.randint(1, 999), b=rng.randint(1, 999))
            found[text] = True
        else:
            found[rng.choice(ESSAY).format(t=rng.choice(TOPICS)) + f" Part {rng.randint(1, 50)}."] = False
    return list(found.items())


def truth(deployment: str, arithmetic: bool) -> float:
    return 1.0 if deployment == "large" or arithmetic else 0.0


@dataclass
class Setup:
    organization: Organization
    dataset: Dataset
    evaluation: Evaluation
    prompts: list[tuple[str, bool]]


def make_evaluation(
    store: ObjectStore,
    organization: Organization,
    count: int = 240,
    deployments: tuple[str, ...] = ("small", "large"),
    scorer: str = "exact_match",
) -> Setup:
    """A dataset of `count` prompts and a SUCCEEDED evaluation of the deployments over all of it, with
    exact-match scores from the ground truth, 20 prompt and 10 completion tokens, and one second per item."""
    for name in deployments:
        if not organization.deployments.filter(name=name).exists():
            make_deployment(organization, name)
    pairs = prompts(count)
    records = [{"messages": [{"role": "user", "content": text}], "reference": "ok"} for text, _ in pairs]
    dataset = datasets.save(
        store, organization_id=organization.pk, name="routing", records=records, source=DatasetSource.UPLOAD,
        heldout_fraction=0.0, seed=0,
    )  # fmt: skip
    start = timezone.now() - datetime.timedelta(hours=1)
    evaluation = Evaluation.objects.create(
        organization=organization, name="routing", dataset=dataset, part="all", deployments=list(deployments),
        scorers=[{"kind": "exact_match", "name": scorer}], prices={n: {"hourly_usd": str(HOURLY.get(n, 5.0)),
        "replicas": 1} for n in deployments}, total_items=count * len(deployments),
        status=EvaluationStatus.SUCCEEDED, finished_at=timezone.now(),
    )  # fmt: skip
    items: list[EvaluationItem] = []
    for index, (_, arithmetic) in enumerate(pairs):
        for name in deployments:
            items.append(
                EvaluationItem(
                    evaluation=evaluation,
                    deployment=name,
                    item_id=str(index + 1),
                    started_at=start + datetime.timedelta(seconds=index),
                    latency_ms=1000,
                    status_code=200,
                    answer="ok" if truth(name, arithmetic) else "no",
                    prompt_tokens=20,
                    completion_tokens=10,
                    scores={scorer: truth(name, arithmetic)},
                )
            )
    EvaluationItem.objects.bulk_create(items)
    return Setup(organization, dataset, evaluation, pairs)


def router_fields(**overrides: Any) -> dict[str, Any]:
    fields: dict[str, Any] = {
        "name": "auto",
        "candidates": [{"deployment": "small"}, {"deployment": "large"}],
        "fallback": "large",
        "quality_difference": 0.1,
    }
    fields.update(overrides)
    return fields
