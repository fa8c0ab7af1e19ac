"""REST: /api/datasets/ — upload, make from logs, list, retrieve, download, delete.

Datasets hold prompts and answers, so they follow the invocation log's rule: members (and API keys) see
every dataset's description and counts, but only owners and admins create, download or delete one.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from functools import partial
from typing import Any

from django.db import transaction
from django.http import StreamingHttpResponse
from drf_spectacular.utils import OpenApiResponse, extend_schema
from rest_framework import mixins, serializers, status
from rest_framework.decorators import action
from rest_framework.parsers import FormParser, JSONParser, MultiPartParser
from rest_framework.request import Request
from rest_framework.response import Response

from learning import browse, datasets
from learning.api.serializers import ExportQuerySerializer
from learning.choices import DatasetPart, DatasetSource
from learning.models import Dataset, InvocationLogObject
from learning.storage import get_store
from marketplace.accounts import tenancy
from marketplace.accounts.models import Organization
from marketplace.api import Conflict, TenantScopedViewSet

MAX_UPLOAD_BYTES = 50 * 1024 * 1024
MAX_SEED = 2**31 - 1


class DatasetSerializer(serializers.ModelSerializer[Dataset]):
    organization: serializers.SlugRelatedField[Organization] = serializers.SlugRelatedField(
        slug_field="slug", read_only=True
    )
    created_by: serializers.SlugRelatedField[Any] = serializers.SlugRelatedField(
        slug_field="username", read_only=True
    )

    class Meta:
        model = Dataset
        fields = [
            "id", "organization", "name", "version", "description", "source", "records", "train_records",
            "heldout_records", "heldout_fraction", "seed", "bytes", "sha256", "created_by", "created_at",
        ]  # fmt: skip
        read_only_fields = fields


class DatasetFieldsSerializer(serializers.Serializer[dict[str, Any]]):
    organization = serializers.SlugField(required=False, help_text="Needed when you belong to several")
    name = serializers.RegexField(
        rf"\A{datasets.NAME.pattern}\Z", max_length=60,
        help_text="Letters, digits, '.', '-' or '_'; a name already used gets its next version",
        error_messages={"invalid": "A name is 1 to 60 letters, digits, '.', '-' or '_', starting with a "
                                   "letter or digit."},
    )  # fmt: skip
    description = serializers.CharField(required=False, allow_blank=True, max_length=500, default="")
    heldout_fraction = serializers.FloatField(
        min_value=0.0, max_value=0.9, default=0.2, help_text="Share of records held out for evaluations"
    )
    seed = serializers.IntegerField(min_value=0, max_value=MAX_SEED, default=0, help_text="Seed of the split")


class DatasetUploadSerializer(DatasetFieldsSerializer):
    file = serializers.FileField(
        help_text="JSON Lines: OpenAI chat fine-tuning format or Bedrock conversation format, one a line"
    )

    def validate_file(self, upload: Any) -> bytes:
        if upload.size > MAX_UPLOAD_BYTES:
            raise serializers.ValidationError(
                f"The file is {upload.size} bytes; the limit is {MAX_UPLOAD_BYTES}. Split it into datasets."
            )
        return bytes(upload.read())


class DatasetFromLogsSerializer(DatasetFieldsSerializer, ExportQuerySerializer):
    """Logged chat calls of a time range (at most 31 days), filtered like the log browser."""

    sample_size = serializers.IntegerField(min_value=1, max_value=datasets.MAX_RECORDS, default=1000)
    deduplicate = serializers.BooleanField(default=True, help_text="Keep one record of equal prompts")
    with_reference = serializers.BooleanField(
        default=True, help_text="The logged answer becomes the record's reference answer"
    )
    limit = None  # type: ignore[assignment]
    cursor = None  # type: ignore[assignment]


class DownloadQuerySerializer(serializers.Serializer[dict[str, Any]]):
    part = serializers.ChoiceField(choices=DatasetPart.choices, default=DatasetPart.ALL)


def jsonl(records: list[dict[str, Any]]) -> Iterator[bytes]:
    for record in records:
        yield (json.dumps(record, ensure_ascii=False, separators=(",", ":")) + "\n").encode()


class DatasetViewSet(mixins.ListModelMixin, mixins.RetrieveModelMixin, TenantScopedViewSet):
    """Datasets of your organisations: named, versioned, immutable lists of chat prompts with optional
    reference answers, split into train and held-out parts by a seed. Owners and admins upload one
    (multipart `file`), make one from invocation logs (`from-logs`), download or delete one; members see
    their descriptions and counts only, since datasets hold the prompts themselves."""

    queryset = Dataset.objects.select_related("organization", "created_by")
    serializer_class = DatasetSerializer
    parser_classes = [MultiPartParser, FormParser, JSONParser]
    filterset_fields = ["name", "source"]

    def _organization(self, request: Request, slug: str | None) -> Organization:
        organization = tenancy.resolve_organization(request, slug)
        self.require_manager(request, organization)
        return organization

    @extend_schema(
        request={"multipart/form-data": DatasetUploadSerializer}, responses={201: DatasetSerializer}
    )
    def create(self, request: Request) -> Response:
        """Upload JSON Lines as a dataset. Every line is checked first; the errors name the line and the
        field, and a file with any error stores nothing."""
        serializer = DatasetUploadSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        data = serializer.validated_data
        organization = self._organization(request, data.get("organization"))
        try:
            dataset = datasets.create_from_upload(
                get_store(), data["file"], organization_id=organization.pk, name=data["name"],
                heldout_fraction=data["heldout_fraction"], seed=data["seed"],
                description=data["description"], created_by_id=request.user.pk,
            )  # fmt: skip
        except datasets.UploadError as error:
            raise serializers.ValidationError({"file": error.errors}) from None
        return Response(DatasetSerializer(dataset).data, status=status.HTTP_201_CREATED)

    @extend_schema(request=DatasetFromLogsSerializer, responses={201: DatasetSerializer})
    @action(detail=False, methods=["post"], url_path="from-logs")
    def from_logs(self, request: Request) -> Response:
        """Make a dataset of logged chat calls that kept their request (and answer): filtered, de-duplicated,
        then `sample_size` of them drawn by `seed`."""
        serializer = DatasetFromLogsSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        data = serializer.validated_data
        organization = self._organization(request, data.get("organization"))
        record_filter = browse.RecordFilter.from_query(data)
        objects = record_filter.objects(InvocationLogObject.objects.filter(organization=organization))
        store = get_store()
        logs = (
            log
            for obj in objects.order_by("first_at", "pk").iterator()
            for log in browse.read(store, obj)
            if record_filter.matches(log, bodies_readable=True)
        )
        selection = datasets.LogSelection(
            sample_size=data["sample_size"], seed=data["seed"], deduplicate=data["deduplicate"],
            with_reference=data["with_reference"],
        )  # fmt: skip
        records = selection.choose(logs)
        if not records:
            raise serializers.ValidationError(
                {"since": ["No logged chat call in this range kept its request: widen the range or the "
                           "filters, or turn on keeping requests in the invocation log settings."]}
            )  # fmt: skip
        dataset = datasets.save(
            store, organization_id=organization.pk, name=data["name"], records=records,
            source=DatasetSource.LOGS, heldout_fraction=data["heldout_fraction"], seed=data["seed"],
            description=data["description"], created_by_id=request.user.pk,
        )  # fmt: skip
        return Response(DatasetSerializer(dataset).data, status=status.HTTP_201_CREATED)

    @extend_schema(
        parameters=[DownloadQuerySerializer],
        responses={(200, "application/x-ndjson"): OpenApiResponse(description="One record per line")},
    )
    @action(detail=True, methods=["get"])
    def download(self, request: Request, pk: str | None = None) -> StreamingHttpResponse:
        """The records as JSON Lines (`part`: all, train or heldout); owners and admins only."""
        dataset = self.get_object()
        self.require_manager(request, dataset.organization)
        query = DownloadQuerySerializer(data=request.query_params)
        query.is_valid(raise_exception=True)
        part = query.validated_data["part"]
        try:
            records = datasets.load_part(get_store(), dataset, part)
        except datasets.RecordsUnavailable as error:
            raise Conflict(str(error)) from None
        response = StreamingHttpResponse(jsonl(records), content_type="application/x-ndjson")
        suffix = "" if part == DatasetPart.ALL else f"-{part}"
        response["Content-Disposition"] = (
            f'attachment; filename="{dataset.name}-v{dataset.version}{suffix}.jsonl"'
        )
        return response

    def destroy(self, request: Request, pk: str | None = None) -> Response:
        """Delete a version and its stored records; refused while evaluations use it."""
        dataset = self.get_object()
        self.require_manager(request, dataset.organization)
        used_by = list(dataset.evaluations.values_list("name", flat=True)[:5])
        if used_by:
            raise Conflict(
                f"{dataset} is used by the evaluations {', '.join(used_by)}; delete them first, "
                "or keep this version."
            )
        with transaction.atomic():
            dataset.delete()
            transaction.on_commit(partial(get_store().delete, dataset.key))
        return Response(status=status.HTTP_204_NO_CONTENT)
