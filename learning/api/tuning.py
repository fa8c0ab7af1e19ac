"""REST: /api/tuning-jobs/ — create, list, retrieve, cancel.

A job spends the organisation's tokens (the teacher's answers) and its machine time (training), so
owners and admins create and cancel; every member reads progress, the loss curve and the evaluation.
Every field of a create is checked (learning.tuning) before anything is written; a refusal is a 400
naming the field.
"""

from __future__ import annotations

from typing import Any

from django.db.models import QuerySet
from drf_spectacular.utils import extend_schema
from rest_framework import mixins, serializers, status
from rest_framework.decorators import action
from rest_framework.request import Request
from rest_framework.response import Response

from learning import tuning
from learning.models import TuningJob, TuningJobEvent, TuningKind
from learning.training.spec import TrainingSpec
from marketplace.accounts import tenancy
from marketplace.accounts.models import Organization
from marketplace.api import Conflict, TenantScopedViewSet
from marketplace.catalog.models import InstanceType


class TuningJobEventSerializer(serializers.ModelSerializer[TuningJobEvent]):
    class Meta:
        model = TuningJobEvent
        fields = ["created_at", "status", "message"]


class TuningJobSerializer(serializers.ModelSerializer[TuningJob]):
    organization: serializers.SlugRelatedField[Organization] = serializers.SlugRelatedField(
        slug_field="slug", read_only=True
    )
    student_base = serializers.CharField(source="student_base.slug", read_only=True)
    dataset_name = serializers.SerializerMethodField()
    custom_model = serializers.SerializerMethodField(
        help_text="The registered student's slug, once registered"
    )
    instance_type: serializers.SlugRelatedField[InstanceType] = serializers.SlugRelatedField(
        slug_field="slug",
        read_only=True,
        help_text="The GPU instance type it trains on; null: this machine's CPUs",
    )

    class Meta:
        model = TuningJob
        fields = [
            "id", "organization", "name", "kind", "teacher_deployment", "student_base", "dataset",
            "dataset_name", "hyperparameters", "max_tokens", "concurrency", "status", "status_message",
            "failure_reason", "progress", "total_steps", "custom_model", "instance_type", "started_at",
            "finished_at", "created_at",
        ]  # fmt: skip
        read_only_fields = fields

    def get_dataset_name(self, job: TuningJob) -> str:
        return str(job.dataset)

    def get_custom_model(self, job: TuningJob) -> str | None:
        return job.custom_model.card.slug if job.custom_model is not None else None


class TuningJobDetailSerializer(TuningJobSerializer):
    events = TuningJobEventSerializer(many=True, read_only=True)

    class Meta(TuningJobSerializer.Meta):
        fields = [
            *TuningJobSerializer.Meta.fields,
            "teacher_instructions",
            "scorers",
            "loss_points",
            "evaluation",
            "events",
        ]
        read_only_fields = fields


class TuningJobCreateSerializer(serializers.Serializer[dict[str, Any]]):
    organization = serializers.SlugField(required=False, help_text="Needed when you belong to several")
    name = serializers.CharField(max_length=40, help_text="The custom model the student is registered as")
    kind = serializers.ChoiceField(choices=TuningKind.choices)
    dataset = serializers.IntegerField(min_value=1, help_text="A dataset version's id")
    student_base = serializers.CharField(max_length=100, help_text="A model's slug (catalog or custom)")
    teacher_deployment = serializers.CharField(
        max_length=40,
        required=False,
        allow_blank=True,
        default="",
        help_text="distillation: a ready deployment",
    )
    teacher_instructions = serializers.CharField(
        max_length=tuning.MAX_INSTRUCTIONS, required=False, allow_blank=True, default="",
        trim_whitespace=False,
        help_text="A system prompt the teacher gets and the student learns to do without",
    )  # fmt: skip
    hyperparameters = serializers.JSONField(
        required=False, default=dict,
        help_text=f"Any of {', '.join(TrainingSpec().to_dict())}; the rest take their defaults",
    )  # fmt: skip
    max_tokens = serializers.IntegerField(min_value=1, max_value=4096, default=256)
    concurrency = serializers.IntegerField(min_value=1, max_value=tuning.MAX_CONCURRENCY, default=4)
    scorers = serializers.JSONField(
        required=False,
        help_text="Evaluation scorers the held-out answers also get (as in /api/evaluations/: judge, "
        "similarity, regex, json, exact_match); none by default",
    )  # fmt: skip
    instance_type = serializers.CharField(
        max_length=100, required=False, allow_blank=True, default="",
        help_text="On a cluster: the GPU instance type the training Job runs on; empty on this machine",
    )  # fmt: skip


class TuningJobViewSet(mixins.ListModelMixin, mixins.RetrieveModelMixin, TenantScopedViewSet):
    """Distillation and fine-tuning jobs of your organisations: a teacher's answers (or a dataset's
    references) turned into a LoRA student, evaluated against the teacher and registered as a custom
    model. Members read them; owners and admins start and cancel them."""

    queryset = TuningJob.objects.select_related(
        "organization", "dataset", "student_base", "custom_model__card", "instance_type"
    )
    serializer_class = TuningJobSerializer
    filterset_fields = ["status", "kind"]

    def get_queryset(self) -> QuerySet[TuningJob]:
        queryset = super().get_queryset()
        if self.action == "retrieve":
            queryset = queryset.prefetch_related("events")
        return queryset

    def get_serializer_class(self) -> type[serializers.BaseSerializer[Any]]:
        return TuningJobDetailSerializer if self.action == "retrieve" else TuningJobSerializer

    @extend_schema(request=TuningJobCreateSerializer, responses={201: TuningJobDetailSerializer})
    def create(self, request: Request) -> Response:
        """Start a job; a worker takes it through its steps, `status` and `progress` show where it is."""
        serializer = TuningJobCreateSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        data = serializer.validated_data
        organization = tenancy.resolve_organization(request, data.get("organization"))
        self.require_manager(request, organization)
        try:
            job = tuning.create_tuning_job(
                organization=organization, user=request.user, name=data["name"], kind=data["kind"],
                dataset_id=data["dataset"], student_base=data["student_base"],
                teacher_deployment=data["teacher_deployment"],
                teacher_instructions=data["teacher_instructions"],
                hyperparameters=data["hyperparameters"], max_tokens=data["max_tokens"],
                concurrency=data["concurrency"], instance_type=data["instance_type"],
                scorer_specs=data.get("scorers", []),
            )  # fmt: skip
        except tuning.Refused as error:
            raise serializers.ValidationError({error.field: [str(error)]}) from None
        return Response(TuningJobDetailSerializer(job).data, status=status.HTTP_201_CREATED)

    @extend_schema(request=None, responses={200: TuningJobSerializer})
    @action(detail=True, methods=["post"])
    def cancel(self, request: Request, pk: str | None = None) -> Response:
        """Stop a job that has not finished; training stops after its step, keeping its checkpoint."""
        job = self.get_object()
        self.require_manager(request, job.organization)
        if job.status in tuning.FINISHED:
            raise Conflict(f"The job is already {job.status}; there is nothing to cancel.")
        tuning.cancel_tuning_job(job)
        job.refresh_from_db()
        return Response(TuningJobSerializer(job).data)
