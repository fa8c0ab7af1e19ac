"""REST: /api/routers/ (prompt routers: CRUD, train, versions, activate, report, trainings) and
/api/feedback/ (an app's rating of one answer).

Every member reads routers, their versions and reports (aggregates, like evaluation results); creating,
changing, training, activating and deleting are for owners and admins. An API key limited to some names
reaches only the routers among them. Feedback is posted by any caller of the organisation (an app's API
key, or a signed-in member) for a request of that organisation.
"""

from __future__ import annotations

from typing import Any

from django.db.models import Value
from django.db.models.functions import Coalesce, NullIf
from drf_spectacular.utils import extend_schema
from rest_framework import mixins, serializers, status
from rest_framework.decorators import action
from rest_framework.exceptions import NotFound
from rest_framework.request import Request
from rest_framework.response import Response

from learning import router_report, router_service, router_training
from learning.evaluations import Refused
from learning.models import (
    Evaluation,
    Feedback,
    Router,
    RouterMode,
    RouterTraining,
    RouterVersion,
)
from marketplace.accounts import tenancy
from marketplace.accounts.authentication import ApiKeyPrincipal
from marketplace.accounts.models import Organization
from marketplace.api import TenantScopedViewSet

DNS_LABEL = r"^[a-z]([-a-z0-9]*[a-z0-9])?$"
# The largest daily shadow-token cap the database stores (a PostgreSQL integer).
MAX_SHADOW_TOKENS_PER_DAY = 2**31 - 1
UNTRAINED = "untrained: fallback answers"


def refused(error: Refused) -> serializers.ValidationError:
    return serializers.ValidationError({error.field: [str(error)]})


class RouterVersionSerializer(serializers.ModelSerializer[RouterVersion]):
    summary = serializers.SerializerMethodField(help_text="Held-out figures at the τ it was trained at")

    class Meta:
        model = RouterVersion
        fields = ["version", "kind", "candidates", "bytes", "evaluation", "training", "summary", "created_at"]
        read_only_fields = fields

    def get_summary(self, version: RouterVersion) -> dict[str, Any]:
        report = version.report
        at = report.get("at_tau") or {}
        gap = report.get("gap_recovered") or {}
        return {
            "tau": at.get("tau"), "quality_retained": at.get("quality_retained"),
            "cost_saved": at.get("cost_saved"), "shares": at.get("shares"), "apgr": gap.get("apgr"),
            "train_items": report.get("train_items"), "heldout_items": report.get("heldout_items"),
            "decision_ms": report.get("decision_ms"),
        }  # fmt: skip


class RouterTrainingSerializer(serializers.ModelSerializer[RouterTraining]):
    versions = serializers.SerializerMethodField()

    class Meta:
        model = RouterTraining
        fields = [
            "id", "evaluation", "scorer", "status", "status_message", "progress", "versions", "started_at",
            "finished_at", "created_at",
        ]  # fmt: skip
        read_only_fields = fields

    def get_versions(self, training: RouterTraining) -> list[int]:
        return sorted(version.version for version in training.versions.all())


class RouterSerializer(serializers.ModelSerializer[Router]):
    organization: serializers.SlugRelatedField[Organization] = serializers.SlugRelatedField(
        slug_field="slug", read_only=True
    )
    candidates = serializers.SerializerMethodField(
        help_text="Each candidate with its cost per 1,000 tokens: the override, the measured one, and the "
        "one in use (null: unknown; set an override or run an evaluation of it)"
    )
    active_version = serializers.SerializerMethodField(help_text="The version in use; null: untrained")
    state = serializers.SerializerMethodField(help_text="What the router does now, in words")

    class Meta:
        model = Router
        fields = [
            "id", "organization", "name", "description", "candidates", "fallback", "quality_difference",
            "mode", "active_version", "state", "embedding_deployment", "shadow_rate", "shadow_tokens_per_day",
            "judge_deployment", "judge_rubric", "created_at", "updated_at",
        ]  # fmt: skip
        read_only_fields = fields

    def get_candidates(self, router: Router) -> list[dict[str, Any]]:
        in_use = router_service.candidate_costs(router)
        return [
            {
                "deployment": c["deployment"],
                "cost_per_1k_tokens": c.get("cost_per_1k_tokens"),
                "measured_cost_per_1k_tokens": router.measured_costs.get(c["deployment"]),
                "cost_per_1k_tokens_in_use": in_use.get(c["deployment"]),
            }
            for c in router.candidates
        ]

    def get_active_version(self, router: Router) -> dict[str, Any] | None:
        version = router.active_version
        return None if version is None else {"version": version.version, "kind": version.kind}

    def get_state(self, router: Router) -> str:
        version = router.active_version
        if version is None:
            return UNTRAINED
        if router.mode == RouterMode.SHADOW:
            return f"shadow: the fallback answers; v{version.version} ({version.kind}) decisions are recorded"
        return f"active: v{version.version} ({version.kind}) chooses"


class RouterWriteSerializer(serializers.Serializer[dict[str, Any]]):
    """The shape of a router's fields; the rules between them live in learning.router_service."""

    organization = serializers.SlugField(required=False, help_text="Needed when you belong to several")
    name = serializers.RegexField(
        DNS_LABEL, max_length=40, help_text="Lowercase letters, digits and hyphens; the model name apps call"
    )
    description = serializers.CharField(max_length=500, required=False, allow_blank=True)
    candidates = serializers.JSONField(
        help_text='Deployment names, or [{"deployment": name, "cost_per_1k_tokens": USD or null}]; 2 to 10'
    )
    fallback = serializers.CharField(max_length=40, help_text="One of the candidates")
    quality_difference = serializers.FloatField(
        min_value=0.0, max_value=1.0, required=False, help_text="τ, a fraction from 0 to 1 (0.1: 10% worse)"
    )
    mode = serializers.ChoiceField(choices=RouterMode.choices, required=False)
    embedding_deployment = serializers.CharField(max_length=40, required=False, allow_blank=True)
    shadow_rate = serializers.FloatField(min_value=0.0, max_value=1.0, required=False)
    shadow_tokens_per_day = serializers.IntegerField(
        min_value=0, max_value=MAX_SHADOW_TOKENS_PER_DAY, required=False
    )
    judge_deployment = serializers.CharField(max_length=40, required=False, allow_blank=True)
    judge_rubric = serializers.CharField(max_length=8000, required=False, allow_blank=True)

    def validate_judge_rubric(self, value: str) -> str:
        if value and "{answer}" not in value:
            raise serializers.ValidationError("A rubric contains {answer} where the answer goes.")
        return value


class TrainSerializer(serializers.Serializer[dict[str, Any]]):
    evaluation = serializers.IntegerField(min_value=1, help_text="An evaluation of every candidate")
    scorer = serializers.CharField(
        max_length=40, help_text="The evaluation's scorer whose scores are targets"
    )


class ActivateSerializer(serializers.Serializer[dict[str, Any]]):
    version = serializers.IntegerField(
        min_value=1, allow_null=True, help_text="A version number; null: untrained"
    )


class ReportQuerySerializer(serializers.Serializer[dict[str, Any]]):
    version = serializers.IntegerField(min_value=1, required=False, help_text="Default: the active version")


class RouterViewSet(
    mixins.ListModelMixin, mixins.RetrieveModelMixin, mixins.DestroyModelMixin, TenantScopedViewSet
):
    """Prompt routers of your organisations: one callable name over two or more deployments; each prompt
    goes to the cheapest candidate predicted within τ of the fallback's quality. Untrained, the fallback
    answers everything."""

    queryset = Router.objects.select_related("organization", "active_version")
    serializer_class = RouterSerializer
    deployment_name_lookup = "name"
    filterset_fields = ["mode"]

    def _write(self, request: Request, router: Router | None, partial: bool) -> Router:
        serializer = RouterWriteSerializer(data=request.data, partial=partial)
        serializer.is_valid(raise_exception=True)
        fields = dict(serializer.validated_data)
        slug = fields.pop("organization", None)
        try:
            if router is None:
                organization = tenancy.resolve_organization(request, slug)
                self.require_manager(request, organization)
                tenancy.require_in_key_scope(request, fields["name"])
                return router_service.create_router(organization=organization, user=request.user, **fields)
            self.require_manager(request, router.organization)
            return router_service.update_router(router, **fields)
        except Refused as error:
            raise refused(error) from None

    @extend_schema(request=RouterWriteSerializer, responses={201: RouterSerializer})
    def create(self, request: Request) -> Response:
        router = self._write(request, None, partial=False)
        return Response(RouterSerializer(router).data, status=status.HTTP_201_CREATED)

    @extend_schema(request=RouterWriteSerializer, responses={200: RouterSerializer})
    def update(self, request: Request, pk: str | None = None) -> Response:
        router = self._write(request, self.get_object(), partial=False)
        return Response(RouterSerializer(router).data)

    @extend_schema(request=RouterWriteSerializer, responses={200: RouterSerializer})
    def partial_update(self, request: Request, pk: str | None = None) -> Response:
        router = self._write(request, self.get_object(), partial=True)
        return Response(RouterSerializer(router).data)

    def perform_destroy(self, instance: Router) -> None:
        self.require_manager(self.request, instance.organization)
        instance.delete()

    @extend_schema(request=TrainSerializer, responses={202: RouterTrainingSerializer})
    @action(detail=True, methods=["post"])
    def train(self, request: Request, pk: str | None = None) -> Response:
        """Train the router's predictors from an evaluation of its candidates (and its judged shadow
        samples); `trainings` shows the progress. Nothing is activated until you activate a version."""
        router = self.get_object()
        self.require_manager(request, router.organization)
        query = TrainSerializer(data=request.data)
        query.is_valid(raise_exception=True)
        evaluation = Evaluation.objects.filter(
            pk=query.validated_data["evaluation"], organization=router.organization
        ).first()
        try:
            training = router_training.start_training(
                router=router, evaluation=evaluation, scorer=query.validated_data["scorer"], user=request.user
            )
        except Refused as error:
            raise refused(error) from None
        return Response(RouterTrainingSerializer(training).data, status=status.HTTP_202_ACCEPTED)

    @extend_schema(responses={200: RouterTrainingSerializer(many=True)})
    @action(detail=True, methods=["get"])
    def trainings(self, request: Request, pk: str | None = None) -> Response:
        router = self.get_object()
        trainings = router.trainings.prefetch_related("versions")[:50]
        return Response(RouterTrainingSerializer(trainings, many=True).data)

    @extend_schema(responses={200: RouterVersionSerializer(many=True)})
    @action(detail=True, methods=["get"])
    def versions(self, request: Request, pk: str | None = None) -> Response:
        router = self.get_object()
        return Response(RouterVersionSerializer(router.versions.all(), many=True).data)

    @extend_schema(request=ActivateSerializer, responses={200: RouterSerializer})
    @action(detail=True, methods=["post"])
    def activate(self, request: Request, pk: str | None = None) -> Response:
        """Route with a trained version (gateway processes pick it up within seconds), or with none."""
        router = self.get_object()
        self.require_manager(request, router.organization)
        query = ActivateSerializer(data=request.data)
        query.is_valid(raise_exception=True)
        number = query.validated_data["version"]
        version = None
        if number is not None:
            version = router.versions.filter(version=number).first()
            if version is None:
                raise serializers.ValidationError({"version": [f"{router.name} has no version {number}."]})
        router_service.activate(router, version)
        return Response(RouterSerializer(router).data)

    @extend_schema(parameters=[ReportQuerySerializer], responses={200: dict})
    @action(detail=True, methods=["get"])
    def report(self, request: Request, pk: str | None = None) -> Response:
        """What a version would do on the held-out split: the quality/cost curve over τ for it beside
        always-fallback, always-cheapest and a same-cost random mix; shares per candidate, quality retained
        and cost saved (95% intervals) at the router's τ; APGR and CPT(50%), CPT(80%); and the same figures
        of the other predictor kinds trained on the same held-out split (`same_split`)."""
        router = self.get_object()
        query = ReportQuerySerializer(data=request.query_params)
        query.is_valid(raise_exception=True)
        number = query.validated_data.get("version")
        if number is None:
            version = router.active_version
            if version is None:
                latest = router.versions.order_by("-version").first()
                return Response(
                    {
                        "router": router.name, "trained": False, "state": UNTRAINED,
                        "latest_version": latest.version if latest else None,
                        "message": "No version is active: the fallback answers every prompt. "
                        + ("Train the router from an evaluation of its candidates." if latest is None
                           else f"Ask for ?version={latest.version} to see it, then activate it."),
                    }
                )  # fmt: skip
        else:
            version = router.versions.filter(version=number).first()
            if version is None:
                raise NotFound(f"{router.name} has no version {number}.")
        # The other kinds trained on the same held-out split, to compare on one chart.
        siblings = (
            router.versions.filter(training_id=version.training_id).exclude(pk=version.pk)
            if version.training_id is not None
            else router.versions.none()
        )
        return Response(
            {
                "router": router.name, "trained": True, "version": version.version, "kind": version.kind,
                "active": router.active_version_id == version.pk, "tau": router.quality_difference,
                "at_router_tau": router_report.at_tau(version.report, router.quality_difference),
                **version.report,
                "same_split": [
                    {
                        "version": other.version, "kind": other.kind, "curve": other.report.get("curve"),
                        "at_router_tau": router_report.at_tau(other.report, router.quality_difference),
                        "gap_recovered": other.report.get("gap_recovered"),
                    }
                    for other in siblings
                ],
            }
        )  # fmt: skip


class FeedbackSerializer(serializers.ModelSerializer[Feedback]):
    class Meta:
        model = Feedback
        fields = ["request_id", "score", "text", "deployment", "router", "created_at", "updated_at"]
        read_only_fields = fields


class FeedbackInputSerializer(serializers.Serializer[dict[str, Any]]):
    organization = serializers.SlugField(required=False, help_text="Needed when a person belongs to several")
    request_id = serializers.RegexField(
        r"^[A-Za-z0-9_.:-]{1,64}$", help_text="The answer's request id: its `x-request-id` response header"
    )
    score = serializers.FloatField(min_value=0.0, max_value=1.0, help_text="0 (useless) to 1 (perfect)")
    text = serializers.CharField(max_length=2000, required=False, allow_blank=True, default="")


class FeedbackViewSet(mixins.ListModelMixin, TenantScopedViewSet):
    """Ratings of answers, one per request id (a later post replaces the earlier one): a score from 0
    (useless) to 1 (perfect) and optional text.

    A rating trains a router only when its request is one of the router's shadow samples: there it
    replaces the judge's score of the answer that was served. A rating of any other call is stored and
    listed but trains nothing, because a training target needs every candidate's score on the same
    prompt and an ordinary call has one answer, from one candidate."""

    # A key limited to some names sees the ratings of calls to those names: the router's when the call
    # went through one (as rating it required), else the deployment's.
    queryset = Feedback.objects.annotate(called=Coalesce(NullIf("router", Value("")), "deployment"))
    serializer_class = FeedbackSerializer
    deployment_name_lookup = "called"

    @extend_schema(
        request=FeedbackInputSerializer, responses={201: FeedbackSerializer, 200: FeedbackSerializer}
    )
    def create(self, request: Request) -> Response:
        """Rate an answer of your organisation by its request id; a later rating replaces the earlier.
        It becomes a router's training target only for a shadow-sampled call (see the list above)."""
        serializer = FeedbackInputSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        data = serializer.validated_data
        user = request.user
        api_key = user.api_key if isinstance(user, ApiKeyPrincipal) else None
        organization = tenancy.resolve_organization(request, data.get("organization"))
        try:
            feedback, created = router_service.give_feedback(
                organization=organization, request_id=data["request_id"], score=data["score"],
                text=data["text"], user=user, api_key=api_key, scope=tenancy.key_scope(request),
            )  # fmt: skip
        except router_service.UnknownRequest:
            raise NotFound(
                f"No request {data['request_id']} in '{organization.slug}'. Send the id of an answer of this "
                "organisation; a call of the last minute may not be recorded yet, so try again shortly."
            ) from None
        return Response(
            FeedbackSerializer(feedback).data,
            status=status.HTTP_201_CREATED if created else status.HTTP_200_OK,
        )
