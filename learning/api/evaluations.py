"""REST: /api/evaluations/ — create, list, retrieve with results, items side by side, cancel, delete.

Results per deployment (scores, latency, tokens, cost) are aggregates, so members read them like the
deployments' usage; the items hold prompts and answers, so only owners and admins read those, as with
the invocation log. Creating, cancelling and deleting spend or discard the organisation's tokens: owners
and admins only.
"""

from __future__ import annotations

from typing import Any

from django.db.models import QuerySet
from drf_spectacular.utils import extend_schema
from rest_framework import mixins, serializers, status
from rest_framework.decorators import action
from rest_framework.request import Request
from rest_framework.response import Response

from learning import datasets, evaluations
from learning.choices import FINISHED_STATUSES, DatasetPart
from learning.models import Dataset, Evaluation, EvaluationEvent
from learning.storage import get_store
from marketplace.accounts import tenancy
from marketplace.accounts.models import Organization
from marketplace.api import Conflict, TenantScopedViewSet

MAX_ITEMS_PAGE = 100


class EvaluationEventSerializer(serializers.ModelSerializer[EvaluationEvent]):
    class Meta:
        model = EvaluationEvent
        fields = ["created_at", "status", "message"]


class EvaluationSerializer(serializers.ModelSerializer[Evaluation]):
    organization: serializers.SlugRelatedField[Organization] = serializers.SlugRelatedField(
        slug_field="slug", read_only=True
    )
    dataset: serializers.PrimaryKeyRelatedField[Dataset] = serializers.PrimaryKeyRelatedField(read_only=True)
    dataset_name = serializers.SerializerMethodField()
    progress = serializers.SerializerMethodField(
        help_text="Items done of the total, failed calls, tokens spent (answers and scoring), seconds"
    )

    class Meta:
        model = Evaluation
        fields = [
            "id", "organization", "name", "dataset", "dataset_name", "part", "deployments", "scorers",
            "max_tokens", "temperature", "concurrency", "status", "status_message", "progress",
            "started_at", "finished_at", "created_at",
        ]  # fmt: skip
        read_only_fields = fields

    def get_dataset_name(self, evaluation: Evaluation) -> str:
        return str(evaluation.dataset)

    def get_progress(self, evaluation: Evaluation) -> dict[str, Any]:
        return evaluations.progress(evaluation)


class EvaluationDetailSerializer(EvaluationSerializer):
    results = serializers.SerializerMethodField(
        help_text="Per deployment: mean score and 95% interval per scorer, latency p50/p95, tokens, cost"
    )
    events = EvaluationEventSerializer(many=True, read_only=True)

    class Meta(EvaluationSerializer.Meta):
        fields = [*EvaluationSerializer.Meta.fields, "prices", "results", "events"]
        read_only_fields = fields

    def get_results(self, evaluation: Evaluation) -> list[dict[str, Any]]:
        return evaluations.results(evaluation)


class EvaluationCreateSerializer(serializers.Serializer[dict[str, Any]]):
    organization = serializers.SlugField(required=False, help_text="Needed when you belong to several")
    name = serializers.CharField(required=False, allow_blank=True, max_length=80, default="")
    dataset = serializers.IntegerField(min_value=1, help_text="A dataset version's id")
    part = serializers.ChoiceField(choices=DatasetPart.choices, default=DatasetPart.HELDOUT)
    deployments = serializers.ListField(
        child=serializers.CharField(max_length=40), min_length=1,
        max_length=evaluations.MAX_DEPLOYMENTS, help_text="Names of the deployments that answer",
    )  # fmt: skip
    scorers = serializers.JSONField(help_text="A list of scorer specs; see learning.scorers")
    max_tokens = serializers.IntegerField(min_value=1, max_value=8192, default=256)
    temperature = serializers.FloatField(min_value=0.0, max_value=2.0, default=0.0)
    concurrency = serializers.IntegerField(min_value=1, max_value=evaluations.MAX_CONCURRENCY, default=4)


class ItemsQuerySerializer(serializers.Serializer[dict[str, Any]]):
    offset = serializers.IntegerField(min_value=0, default=0)
    limit = serializers.IntegerField(min_value=1, max_value=MAX_ITEMS_PAGE, default=20)


def side_by_side(
    evaluation: Evaluation, records: list[dict[str, Any]], offset: int, limit: int
) -> list[dict[str, Any]]:
    """A page of records, each with every deployment's answer, scores and notes (null: not answered yet)."""
    page = records[offset : offset + limit]
    items = evaluation.items.filter(item_id__in=[record["id"] for record in page])
    found = {(item.item_id, item.deployment): item for item in items}
    rows = []
    for record in page:
        answers = {}
        for name in evaluation.deployments:
            item = found.get((record["id"], name))
            answers[name] = (
                None
                if item is None
                else {
                    "answer": item.answer, "error": item.error, "scores": item.scores, "notes": item.notes,
                    "latency_ms": item.latency_ms,
                    "tokens": {"prompt": item.prompt_tokens, "completion": item.completion_tokens},
                }
            )  # fmt: skip
        rows.append({**{k: record[k] for k in ("id", "messages", "reference")}, "answers": answers})
    return rows


class EvaluationViewSet(mixins.ListModelMixin, mixins.RetrieveModelMixin, TenantScopedViewSet):
    """Evaluations of your organisations: a dataset (or its held-out part) answered by deployments and
    scored. Progress and per-deployment results are readable by every member; the answers themselves
    (`items`) by owners and admins only."""

    queryset = Evaluation.objects.select_related("organization", "dataset")
    serializer_class = EvaluationSerializer
    filterset_fields = ["status"]

    def get_queryset(self) -> QuerySet[Evaluation]:
        queryset = super().get_queryset()
        if self.action == "list":
            queryset = evaluations.with_progress(queryset)
        if self.action == "retrieve":
            queryset = queryset.prefetch_related("events")
        return queryset

    def get_serializer_class(self) -> type[serializers.BaseSerializer[Any]]:
        return EvaluationDetailSerializer if self.action == "retrieve" else EvaluationSerializer

    @extend_schema(request=EvaluationCreateSerializer, responses={201: EvaluationDetailSerializer})
    def create(self, request: Request) -> Response:
        """Start an evaluation; a worker answers and scores every item, `progress` shows how far it is."""
        serializer = EvaluationCreateSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        data = serializer.validated_data
        organization = tenancy.resolve_organization(request, data.get("organization"))
        self.require_manager(request, organization)
        dataset = Dataset.objects.filter(pk=data["dataset"], organization=organization).first()
        if dataset is None:
            raise serializers.ValidationError(
                {"dataset": [f"No dataset {data['dataset']} in '{organization.slug}'."]}
            )
        try:
            evaluation = evaluations.create_evaluation(
                organization=organization, user=request.user, dataset=dataset,
                deployments=data["deployments"], scorer_specs=data["scorers"], name=data["name"],
                part=data["part"], max_tokens=data["max_tokens"], temperature=data["temperature"],
                concurrency=data["concurrency"],
            )  # fmt: skip
        except evaluations.Refused as error:
            raise serializers.ValidationError({error.field: [str(error)]}) from None
        return Response(EvaluationDetailSerializer(evaluation).data, status=status.HTTP_201_CREATED)

    @extend_schema(parameters=[ItemsQuerySerializer], responses={200: dict})
    @action(detail=True, methods=["get"])
    def items(self, request: Request, pk: str | None = None) -> Response:
        """Records side by side: the prompt, the reference and each deployment's answer with its scores
        (`offset`, `limit` ≤ 100). Owners and admins only."""
        evaluation = self.get_object()
        self.require_manager(request, evaluation.organization)
        query = ItemsQuerySerializer(data=request.query_params)
        query.is_valid(raise_exception=True)
        try:
            records = datasets.load_part(get_store(), evaluation.dataset, evaluation.part)
        except datasets.RecordsUnavailable as error:
            raise Conflict(str(error)) from None
        offset, limit = query.validated_data["offset"], query.validated_data["limit"]
        return Response({"count": len(records), "results": side_by_side(evaluation, records, offset, limit)})

    @extend_schema(request=None, responses={200: EvaluationSerializer})
    @action(detail=True, methods=["post"])
    def cancel(self, request: Request, pk: str | None = None) -> Response:
        """Stop a pending or running evaluation after the items in flight; what is done is kept."""
        evaluation = self.get_object()
        self.require_manager(request, evaluation.organization)
        if evaluation.status in FINISHED_STATUSES:
            raise Conflict(f"The evaluation is already {evaluation.status}; there is nothing to cancel.")
        evaluations.cancel_evaluation(evaluation)
        evaluation.refresh_from_db()
        return Response(EvaluationSerializer(evaluation).data)

    def destroy(self, request: Request, pk: str | None = None) -> Response:
        """Delete a finished evaluation and its results (cancel a running one first)."""
        evaluation = self.get_object()
        self.require_manager(request, evaluation.organization)
        if evaluation.status not in FINISHED_STATUSES:
            raise Conflict(f"The evaluation is {evaluation.status}; cancel it first, then delete it.")
        evaluation.delete()
        return Response(status=status.HTTP_204_NO_CONTENT)
