"""REST: /api/guardrails/ (CRUD of the draft, versions, publish, try, score-topic-examples).

Every member reads guardrails and their versions and may try the draft on a text; creating, changing,
publishing, scoring topic examples (which calls the embeddings deployment) and deleting are for owners
and admins. The request body of create and update carries the configuration's fields at its top level
(learning.guardrails.service); an error names the field (`words[2]`, `topics[0].threshold`).
"""

from __future__ import annotations

from typing import Any

from django.db.models import Max
from drf_spectacular.utils import extend_schema
from rest_framework import mixins, serializers, status
from rest_framework.decorators import action
from rest_framework.exceptions import NotFound
from rest_framework.request import Request
from rest_framework.response import Response

from learning import guardrails
from learning.evaluations import Refused
from learning.guardrails import attachments, service
from learning.models import Guardrail, GuardrailAttachment, GuardrailVersion
from marketplace.accounts import tenancy
from marketplace.accounts.models import Organization
from marketplace.api import TenantScopedViewSet

DNS_LABEL = r"^[a-z]([-a-z0-9]*[a-z0-9])?$"
MAX_TRY_CHARACTERS = 20_000


def refused(error: Refused) -> serializers.ValidationError:
    return serializers.ValidationError({error.field: [str(error)]})


def verdict_data(verdict: guardrails.Verdict) -> dict[str, Any]:
    return {
        "action": verdict.action,
        "text": verdict.text,
        "message": verdict.message,
        "topics_checked": verdict.topics_checked,
        "interventions": [
            {"kind": hit.kind, "name": hit.name, "action": hit.action, "match": hit.match, "score": hit.score}
            for hit in verdict.interventions
        ],
    }


class GuardrailVersionSerializer(serializers.ModelSerializer[GuardrailVersion]):
    class Meta:
        model = GuardrailVersion
        fields = ["version", "config", "created_at"]
        read_only_fields = fields


class GuardrailSerializer(serializers.ModelSerializer[Guardrail]):
    organization: serializers.SlugRelatedField[Organization] = serializers.SlugRelatedField(
        slug_field="slug", read_only=True
    )
    latest_version = serializers.SerializerMethodField(help_text="The version callers apply; null: none yet")

    class Meta:
        model = Guardrail
        fields = [
            "id",
            "organization",
            "name",
            "description",
            "draft",
            "latest_version",
            "created_at",
            "updated_at",
        ]
        read_only_fields = fields

    def get_latest_version(self, guardrail: Guardrail) -> int | None:
        if hasattr(guardrail, "latest"):  # annotated by the viewset's queryset
            return guardrail.latest
        return guardrail.versions.order_by("-version").values_list("version", flat=True).first()


class GuardrailWriteSerializer(serializers.Serializer[dict[str, Any]]):
    """Name and description; the configuration's fields are checked by learning.guardrails.service."""

    organization = serializers.SlugField(required=False, help_text="Needed when you belong to several")
    name = serializers.RegexField(DNS_LABEL, max_length=40, help_text="Lowercase letters, digits and hyphens")
    description = serializers.CharField(max_length=500, required=False, allow_blank=True)
    personal_data = serializers.JSONField(required=False, help_text='{"EMAIL": "mask" | "block" | "report"}')
    detector = serializers.JSONField(
        required=False,
        help_text="Personal-data detector: builtin (validated expressions, ~0.06 ms for 1 KB) or presidio "
        "(Microsoft Presidio's pattern recognizers, ~2.5 ms for 1 KB)",
    )
    words = serializers.JSONField(required=False, help_text="Words and phrases to block")
    profanity = serializers.JSONField(required=False, help_text="true: block the profanity list too")
    prompt_attacks = serializers.JSONField(required=False, help_text="true: block prompt attacks in input")
    topics = serializers.JSONField(required=False, help_text="[{name, definition, examples, threshold}]")
    embedding_deployment = serializers.JSONField(required=False, help_text="Embeds texts for denied topics")
    blocked_input_message = serializers.JSONField(required=False)
    blocked_output_message = serializers.JSONField(required=False)

    def validate(self, attrs: dict[str, Any]) -> dict[str, Any]:
        unknown = sorted(set(self.initial_data) - set(self.fields))
        if unknown:
            raise serializers.ValidationError({unknown[0]: [f"A guardrail takes no '{unknown[0]}'."]})
        return attrs


class TrySerializer(serializers.Serializer[dict[str, Any]]):
    text = serializers.CharField(max_length=MAX_TRY_CHARACTERS, allow_blank=True, trim_whitespace=False)
    direction = serializers.ChoiceField(
        choices=[guardrails.INPUT, guardrails.OUTPUT], default=guardrails.INPUT
    )


class ScoreSerializer(serializers.Serializer[dict[str, Any]]):
    topic = serializers.CharField(max_length=100, help_text="A topic of the draft, by name")
    texts = serializers.ListField(
        child=serializers.CharField(max_length=1000),
        max_length=50,
        required=False,
        default=list,
        help_text="Texts to score beside the examples (e.g. ones that must pass)",
    )


class GuardrailViewSet(
    mixins.ListModelMixin, mixins.RetrieveModelMixin, mixins.DestroyModelMixin, TenantScopedViewSet
):
    """Guardrails of your organisations: personal data masked, blocked or reported; words, prompt attacks
    and denied topics blocked. A draft is edited, then published as version 1, 2, …; callers apply a
    version (`POST /guardrail/{id}/version/{v}/apply` at the gateway)."""

    queryset = (
        Guardrail.objects.select_related("organization")
        .annotate(latest=Max("versions__version"))
        .order_by("name", "id")
    )
    serializer_class = GuardrailSerializer

    def _write(self, request: Request, guardrail: Guardrail | None, partial: bool) -> Guardrail:
        serializer = GuardrailWriteSerializer(data=request.data, partial=partial)
        serializer.is_valid(raise_exception=True)
        fields = dict(serializer.validated_data)
        slug = fields.pop("organization", None)
        config = {key: fields.pop(key) for key in service.FIELDS if key in fields}
        try:
            if guardrail is None:
                organization = tenancy.resolve_organization(request, slug)
                self.require_manager(request, organization)
                return service.create_guardrail(
                    organization=organization, user=request.user, config=config, **fields
                )
            self.require_manager(request, guardrail.organization)
            if partial:
                config = {**guardrail.draft, **config}
            return service.update_guardrail(guardrail, config=config, **fields)
        except Refused as error:
            raise refused(error) from None

    @extend_schema(request=GuardrailWriteSerializer, responses={201: GuardrailSerializer})
    def create(self, request: Request) -> Response:
        guardrail = self._write(request, None, partial=False)
        return Response(GuardrailSerializer(guardrail).data, status=status.HTTP_201_CREATED)

    @extend_schema(request=GuardrailWriteSerializer, responses={200: GuardrailSerializer})
    def update(self, request: Request, pk: str | None = None) -> Response:
        guardrail = self._write(request, self.get_object(), partial=False)
        return Response(GuardrailSerializer(guardrail).data)

    @extend_schema(request=GuardrailWriteSerializer, responses={200: GuardrailSerializer})
    def partial_update(self, request: Request, pk: str | None = None) -> Response:
        guardrail = self._write(request, self.get_object(), partial=True)
        return Response(GuardrailSerializer(guardrail).data)

    def perform_destroy(self, instance: Guardrail) -> None:
        self.require_manager(self.request, instance.organization)
        instance.delete()

    @extend_schema(responses={200: GuardrailVersionSerializer(many=True)})
    @action(detail=True, methods=["get"])
    def versions(self, request: Request, pk: str | None = None) -> Response:
        guardrail = self.get_object()
        return Response(GuardrailVersionSerializer(guardrail.versions.all(), many=True).data)

    @extend_schema(request=None, responses={201: GuardrailVersionSerializer})
    @action(detail=True, methods=["post"])
    def publish(self, request: Request, pk: str | None = None) -> Response:
        """Freeze the draft as the next version; denied topics' examples are embedded now."""
        guardrail = self.get_object()
        self.require_manager(request, guardrail.organization)
        try:
            version = service.publish(guardrail, request.user)
        except Refused as error:
            raise refused(error) from None
        return Response(GuardrailVersionSerializer(version).data, status=status.HTTP_201_CREATED)

    @extend_schema(request=TrySerializer, responses={200: dict})
    @action(detail=True, methods=["post"], url_path="try")
    def try_draft(self, request: Request, pk: str | None = None) -> Response:
        """Apply the draft to a text, as the gateway would apply it once published."""
        guardrail = self.get_object()
        query = TrySerializer(data=request.data)
        query.is_valid(raise_exception=True)
        try:
            verdict = service.try_draft(
                guardrail, query.validated_data["text"], query.validated_data["direction"]
            )
        except Refused as error:
            raise refused(error) from None
        return Response(verdict_data(verdict))

    @extend_schema(request=ScoreSerializer, responses={200: dict})
    @action(detail=True, methods=["post"], url_path="score-topic-examples")
    def score_topic_examples(self, request: Request, pk: str | None = None) -> Response:
        """Each example's similarity to the topic's other examples, and of any texts you add, with a
        suggested threshold: to choose the topic's threshold before publishing."""
        guardrail = self.get_object()
        self.require_manager(request, guardrail.organization)
        query = ScoreSerializer(data=request.data)
        query.is_valid(raise_exception=True)
        try:
            scores = service.score_examples(
                guardrail, query.validated_data["topic"], query.validated_data["texts"]
            )
        except Refused as error:
            raise refused(error) from None
        return Response(scores)

    @extend_schema(request=dict, responses={200: dict, 201: dict})
    @action(detail=True, methods=["get", "post"])
    def attachments(self, request: Request, pk: str | None = None) -> Response:
        """Where the guardrail applies: GET lists, POST attaches it to one of your deployments, routers or
        API keys ({"deployment" | "router" | "api_key": name or key prefix, "version": n or null for the
        latest published}). Every guardrail attached to a call's key, router and deployment applies."""
        guardrail = self.get_object()
        if request.method == "POST":
            self.require_manager(request, guardrail.organization)
            try:
                attachment = attachments.attach(guardrail, request.data)
            except Refused as error:
                raise refused(error) from None
            return Response(attachments.describe(attachment), status=status.HTTP_201_CREATED)
        found = guardrail.attachments.select_related("deployment", "router", "api_key")
        return Response([attachments.describe(attachment) for attachment in found])

    @extend_schema(request=None, responses={204: None})
    @action(detail=True, methods=["delete"], url_path=r"attachments/(?P<attachment_id>\d+)")
    def detach(self, request: Request, pk: str | None = None, attachment_id: str = "") -> Response:
        """Stop applying the guardrail there (within the gateway's cache time, a few seconds)."""
        guardrail = self.get_object()
        self.require_manager(request, guardrail.organization)
        deleted, _ = GuardrailAttachment.objects.filter(guardrail=guardrail, pk=int(attachment_id)).delete()
        if not deleted:
            raise NotFound("No such attachment of this guardrail.")
        return Response(status=status.HTTP_204_NO_CONTENT)
