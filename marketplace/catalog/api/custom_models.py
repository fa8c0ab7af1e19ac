"""REST: /api/custom-models/ — an organisation's own models: register, list, retrieve, delete.

Members (and API keys) see their organisation's custom models; owners and admins register and delete
them. A custom model's card deploys through /api/deployments/ by its `slug`, like a catalog card.
"""

from __future__ import annotations

from typing import Any

from drf_spectacular.utils import extend_schema
from rest_framework import mixins, serializers, status
from rest_framework.decorators import action
from rest_framework.request import Request
from rest_framework.response import Response

from marketplace.accounts import tenancy
from marketplace.accounts.models import Organization
from marketplace.api import TenantScopedViewSet
from marketplace.catalog import custom_models
from marketplace.catalog.choices import CustomModelSource
from marketplace.catalog.models import CustomModel, ModelCard


class CustomModelSerializer(serializers.ModelSerializer[CustomModel]):
    organization: serializers.SlugRelatedField[Organization] = serializers.SlugRelatedField(
        slug_field="slug", read_only=True
    )
    slug = serializers.CharField(source="card.slug", read_only=True, help_text="What a deployment names")
    base: serializers.SlugRelatedField[ModelCard] = serializers.SlugRelatedField(
        slug_field="slug", read_only=True
    )
    parameters = serializers.IntegerField(source="card.parameters", read_only=True)
    context_length = serializers.IntegerField(source="card.context_length", read_only=True)
    dtype = serializers.CharField(source="card.dtype", read_only=True)
    tasks = serializers.ListField(source="card.tasks", child=serializers.CharField(), read_only=True)
    routes = serializers.ListField(source="card.routes", child=serializers.CharField(), read_only=True)
    gpu_memory_gb = serializers.IntegerField(
        source="card.gpu_memory_gb", read_only=True, help_text="GPU memory needed at the default context"
    )
    min_gpu_memory_gb = serializers.IntegerField(
        source="card.min_gpu_memory_gb", read_only=True, help_text="At the shortest deployable context"
    )
    cpu_capable = serializers.BooleanField(source="card.cpu_capable", read_only=True)
    private_repository = serializers.SerializerMethodField(help_text="A token is kept for the repository")
    uri = serializers.CharField(source="store_uri", read_only=True, help_text="store: the s3:// folder")
    endpoint_url = serializers.CharField(source="store_endpoint_url", read_only=True)
    region = serializers.CharField(source="store_region", read_only=True)
    access_key_id = serializers.CharField(source="store_access_key_id", read_only=True)
    created_by: serializers.SlugRelatedField[Any] = serializers.SlugRelatedField(
        slug_field="username", read_only=True
    )

    class Meta:
        model = CustomModel
        fields = [
            "id", "organization", "name", "slug", "source", "huggingface_repo", "revision", "path", "uri",
            "endpoint_url", "region", "access_key_id", "base",
            "lora_rank", "target_modules", "architecture", "parameters", "context_length", "dtype", "tasks",
            "routes", "gpu_memory_gb", "min_gpu_memory_gb", "cpu_capable", "private_repository", "facts",
            "created_by", "created_at",
        ]  # fmt: skip
        read_only_fields = fields

    def get_private_repository(self, custom: CustomModel) -> bool:
        return bool(custom.hf_token_encrypted)


class CustomModelCreateSerializer(serializers.Serializer[dict[str, Any]]):
    organization = serializers.SlugField(required=False, help_text="Needed when you belong to several")
    name = serializers.CharField(max_length=40, help_text="Lowercase letters, digits and hyphens")
    # DRF takes declared fields off the class, so this `source` never meets Field.source.
    source = serializers.ChoiceField(choices=CustomModelSource.choices)  # type: ignore[assignment]
    huggingface_repo = serializers.CharField(
        max_length=200, required=False, allow_blank=True, help_text="hub: owner/name"
    )
    revision = serializers.CharField(
        max_length=40, required=False, allow_blank=True, help_text="hub: the commit, 40 hexadecimal digits"
    )
    hf_token = serializers.CharField(
        max_length=400,
        required=False,
        allow_blank=True,
        write_only=True,
        trim_whitespace=True,
        help_text="hub: a read token for a private or gated repository; stored encrypted, never shown",
    )
    path = serializers.CharField(
        max_length=500, required=False, allow_blank=True, help_text="path, adapter: the folder of the files"
    )
    uri = serializers.CharField(
        max_length=1100, required=False, allow_blank=True, help_text="store: s3://bucket/folder of the files"
    )
    endpoint_url = serializers.CharField(
        max_length=200,
        required=False,
        allow_blank=True,
        default="",
        help_text="store: an S3-compatible store's endpoint the platform allows; empty for AWS S3",
    )
    region = serializers.CharField(max_length=64, required=False, allow_blank=True, default="")
    access_key_id = serializers.CharField(
        max_length=128, required=False, allow_blank=True, help_text="store: a key that may read the folder"
    )
    secret_access_key = serializers.CharField(
        max_length=256,
        required=False,
        allow_blank=True,
        write_only=True,
        help_text="store: the key's secret; stored encrypted, never shown",
    )
    base = serializers.CharField(
        max_length=64, required=False, allow_blank=True, help_text="adapter: the base model's slug"
    )
    summary = serializers.CharField(max_length=2000, required=False, allow_blank=True, default="")

    NEEDED = {
        CustomModelSource.HUB: ("huggingface_repo", "revision"),
        CustomModelSource.PATH: ("path",),
        CustomModelSource.STORE: ("uri", "access_key_id", "secret_access_key"),
        CustomModelSource.ADAPTER: ("path", "base"),
    }

    def validate(self, attrs: dict[str, Any]) -> dict[str, Any]:
        missing = {
            name: [f"Needed to register from source '{attrs['source']}'."]
            for name in self.NEEDED[attrs["source"]]
            if not attrs.get(name)
        }
        if missing:
            raise serializers.ValidationError(missing)
        return attrs

    def register(self, organization: Organization, user: Any) -> CustomModel:
        data = self.validated_data
        common = {
            "organization": organization,
            "user": user,
            "name": data["name"],
            "summary": data["summary"],
        }
        if data["source"] == CustomModelSource.HUB:
            return custom_models.register_from_hub(
                **common,
                huggingface_repo=data["huggingface_repo"],
                revision=data["revision"],
                hf_token=data.get("hf_token", ""),
            )
        if data["source"] == CustomModelSource.PATH:
            return custom_models.register_from_path(**common, path=data["path"])
        if data["source"] == CustomModelSource.STORE:
            return custom_models.register_from_store(
                **common,
                uri=data["uri"],
                endpoint_url=data["endpoint_url"],
                region=data["region"],
                access_key_id=data["access_key_id"],
                secret_access_key=data["secret_access_key"],
            )
        base = ModelCard.objects.visible_to(organization).filter(slug=data["base"]).first()
        if base is None:
            raise serializers.ValidationError(
                {"base": [f"No model '{data['base']}' in the catalog or among your custom models."]}
            )
        return custom_models.register_adapter(**common, path=data["path"], base=base)


class StoreKeySerializer(serializers.Serializer[dict[str, Any]]):
    access_key_id = serializers.CharField(max_length=128, help_text="A key that may read the model's folder")
    secret_access_key = serializers.CharField(
        max_length=256, write_only=True, help_text="The key's secret; stored encrypted, never shown"
    )


class CustomModelViewSet(
    mixins.ListModelMixin, mixins.RetrieveModelMixin, mixins.DestroyModelMixin, TenantScopedViewSet
):
    """Your organisations' custom models: weights of your own (a Hugging Face repository at a commit, a
    folder on a volume, an S3-compatible object-store folder read with your own key, or a LoRA adapter on a
    base model), read at registration and deployable like a catalog model
    (by `slug`, with no license to accept), visible to your organisation only."""

    queryset = CustomModel.objects.select_related("organization", "card", "base", "created_by")
    serializer_class = CustomModelSerializer
    filterset_fields = ["source", "name"]

    @extend_schema(request=CustomModelCreateSerializer, responses={201: CustomModelSerializer})
    def create(self, request: Request) -> Response:
        """Register a custom model: its files are read (config.json and the safetensors headers, or the
        adapter's adapter_config.json) and its card filled from them; anything the engine could not serve
        is refused, naming the field. Owners and admins only."""
        serializer = CustomModelCreateSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        organization = tenancy.resolve_organization(request, serializer.validated_data.get("organization"))
        self.require_manager(request, organization)
        user = request.user if getattr(request.user, "pk", None) is not None else None
        custom = serializer.register(organization, user)
        return Response(CustomModelSerializer(custom).data, status=status.HTTP_201_CREATED)

    @extend_schema(request=StoreKeySerializer, responses={200: CustomModelSerializer})
    @action(detail=True, methods=["post"])
    def key(self, request: Request, pk: str | None = None) -> Response:
        """Replace the read key of a model registered from an object store (a rotated or revoked key):
        refused unless the new key reads the folder's config.json; its deployments are applied again with
        it. Owners and admins only."""
        custom = self.get_object()
        self.require_manager(request, custom.organization)
        serializer = StoreKeySerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        custom = custom_models.replace_store_key(custom, **serializer.validated_data)
        return Response(CustomModelSerializer(custom).data)

    def destroy(self, request: Request, *args: Any, **kwargs: Any) -> Response:
        """Delete a custom model; refused while a deployment runs it or an adapter is registered on it."""
        custom = self.get_object()
        self.require_manager(request, custom.organization)
        custom_models.delete_custom_model(custom)
        return Response(status=status.HTTP_204_NO_CONTENT)
