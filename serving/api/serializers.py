from __future__ import annotations

from typing import Any

from django.contrib.auth.models import User
from rest_framework import serializers

from marketplace.accounts.models import Organization
from marketplace.catalog.models import InstanceType, ModelCard
from marketplace.subscriptions.services import subscription_in_force
from serving import services
from serving.choices import POLICY_EXPLANATIONS, AutoscalingPolicy
from serving.models import Deployment, DeploymentEvent

DNS_LABEL = r"^[a-z]([-a-z0-9]*[a-z0-9])?$"
DTYPES = ["auto", "bfloat16", "float16", "float32"]
QUANTIZATIONS = ["awq", "gptq", "fp8", "bitsandbytes", "awq_marlin", "gptq_marlin", "compressed-tensors"]


class EngineOptionsSerializer(serializers.Serializer[dict[str, Any]]):
    """The allow-list of vLLM options a deployment may set; anything else is refused by name."""

    max_model_len = serializers.IntegerField(min_value=128, max_value=10_485_760, required=False)
    dtype = serializers.ChoiceField(choices=DTYPES, required=False)
    quantization = serializers.ChoiceField(choices=QUANTIZATIONS, required=False)
    gpu_memory_utilization = serializers.FloatField(min_value=0.1, max_value=0.99, required=False)
    max_num_seqs = serializers.IntegerField(min_value=1, max_value=4096, required=False)
    enable_prefix_caching = serializers.BooleanField(required=False)

    def to_internal_value(self, data: Any) -> dict[str, Any]:
        if isinstance(data, dict):
            unknown = sorted(set(data) - set(self.fields))
            if unknown:
                allowed = ", ".join(self.fields)
                raise serializers.ValidationError(
                    {key: [f"Unknown engine option; allowed: {allowed}."] for key in unknown}
                )
        return dict(super().to_internal_value(data))


class ScalingSerializer(serializers.Serializer[Deployment]):
    min_replicas = serializers.IntegerField(min_value=0, max_value=64)
    max_replicas = serializers.IntegerField(min_value=1, max_value=64)
    autoscaling_policy = serializers.ChoiceField(
        choices=AutoscalingPolicy.choices, default=AutoscalingPolicy.FIXED
    )
    autoscaling_target = serializers.FloatField(min_value=0.01, max_value=10_000, default=5.0)
    idle_seconds = serializers.IntegerField(min_value=60, max_value=86_400, default=900)
    scale_up_window_seconds = serializers.IntegerField(min_value=0, max_value=3600, default=0)
    scale_down_window_seconds = serializers.IntegerField(min_value=0, max_value=3600, default=300)

    def scaling(self) -> services.Scaling:
        """The validated replica bounds and policy, as the services take them."""
        data = self.validated_data
        return services.Scaling(
            min_replicas=data["min_replicas"],
            max_replicas=data["max_replicas"],
            policy=data["autoscaling_policy"],
            target=data["autoscaling_target"],
            idle_seconds=data["idle_seconds"],
            scale_up_window_seconds=data["scale_up_window_seconds"],
            scale_down_window_seconds=data["scale_down_window_seconds"],
        )


class AdapterSerializer(serializers.Serializer[dict[str, Any]]):
    """A LoRA adapter to serve beside the deployment's model, called `<deployment>:<name>`."""

    name = serializers.RegexField(
        DNS_LABEL,
        max_length=40,
        help_text="Lowercase letters, digits and hyphens; apps call `<deployment>:<name>`",
    )
    model = serializers.SlugRelatedField(
        slug_field="slug",
        queryset=ModelCard.every_card.select_related("custom_model"),
        help_text="The slug of one of your custom models registered as a LoRA adapter on the deployment's "
        "weights",
    )


def adapter_choices(adapters: list[dict[str, Any]]) -> list[services.AdapterChoice]:
    return [(adapter["name"], adapter["model"]) for adapter in adapters]


class DeploymentCreateSerializer(ScalingSerializer):
    organization = serializers.SlugField(required=False, help_text="Default: your only organisation")
    name = serializers.RegexField(
        DNS_LABEL, max_length=40, help_text="Lowercase letters, digits and hyphens; the model name apps call"
    )
    # Every card: serving.services.create_deployment answers another organisation's custom model as absent.
    model = serializers.SlugRelatedField(
        slug_field="slug", queryset=ModelCard.every_card.select_related("license")
    )
    instance_type = serializers.SlugRelatedField(slug_field="slug", queryset=InstanceType.objects.all())
    min_replicas = serializers.IntegerField(min_value=0, max_value=64, default=1)
    max_replicas = serializers.IntegerField(min_value=1, max_value=64, default=1)
    tensor_parallel_size = serializers.IntegerField(min_value=1, max_value=64, required=False)
    engine_options = EngineOptionsSerializer(required=False, default=dict)
    adapters = AdapterSerializer(
        many=True,
        required=False,
        default=list,
        help_text="LoRA adapters served by the same engine beside the model, each by its own name",
    )

    def create_deployment(self, organization: Organization, user: Any) -> Deployment:
        """Admit and save the validated request (serving.services decides whether it may be)."""
        data = self.validated_data
        return services.create_deployment(
            organization=organization,
            user=user if getattr(user, "pk", None) is not None else None,
            name=data["name"],
            card=data["model"],
            instance_type=data["instance_type"],
            scaling=self.scaling(),
            engine_options=data["engine_options"],
            tensor_parallel_size=data.get("tensor_parallel_size"),
            actor=user,
            adapters=adapter_choices(data["adapters"]),
        )


class DeploymentScaleSerializer(ScalingSerializer):
    pass


class DeploymentUpdateSerializer(serializers.Serializer[Deployment]):
    instance_type = serializers.SlugRelatedField(
        slug_field="slug", queryset=InstanceType.objects.all(), required=False
    )
    tensor_parallel_size = serializers.IntegerField(min_value=1, max_value=64, required=False)
    engine_options = EngineOptionsSerializer(required=False)
    adapters = AdapterSerializer(
        many=True, required=False, help_text="The adapters to serve from now on (all of them; [] for none)"
    )

    def validate(self, attrs: dict[str, Any]) -> dict[str, Any]:
        if not attrs:
            raise serializers.ValidationError(
                {
                    "non_field_errors": [
                        "Change at least one of instance_type, tensor_parallel_size, engine_options, "
                        "adapters."
                    ]
                }
            )
        return attrs


class DeploymentEventSerializer(serializers.ModelSerializer[DeploymentEvent]):
    actor: serializers.SlugRelatedField[User] = serializers.SlugRelatedField(
        slug_field="username",
        read_only=True,
        allow_null=True,
        help_text="The username of the person who asked for this change, while their account exists; "
        "null when the platform acted (the reconciler, a worker, a budget) or an API key did",
    )
    actor_name = serializers.CharField(
        source="by",
        read_only=True,
        help_text="Who acted, as the deployment page says it: a username, an API key's name and "
        "prefix, or 'the platform'",
    )

    class Meta:
        model = DeploymentEvent
        fields = ["created_at", "status", "message", "actor", "actor_name"]


class DeploymentSerializer(serializers.ModelSerializer[Deployment]):
    organization = serializers.CharField(source="organization.slug", read_only=True)
    model = serializers.CharField(source="model_card.slug", read_only=True)
    model_name = serializers.CharField(source="model_card.name", read_only=True)
    instance_type = serializers.CharField(source="instance_type.slug", read_only=True)
    autoscaling_explanation = serializers.SerializerMethodField()
    rolled_out = serializers.SerializerMethodField()
    subscription_in_force = serializers.SerializerMethodField(
        help_text="False: the model's subscription was cancelled or its changed license terms not yet "
        "accepted; the deployment is not served and cannot be scaled up or updated until they are"
    )
    adapters = serializers.SerializerMethodField(
        help_text="LoRA adapters served beside the model: `{name, model, served_name}`, called by served_name"
    )

    class Meta:
        model = Deployment
        fields = [
            "id", "organization", "name", "model", "model_name", "instance_type", "backend", "status",
            "status_message", "status_changed_at", "ready_replicas", "desired_replicas", "min_replicas",
            "max_replicas", "autoscaling_policy", "autoscaling_explanation", "autoscaling_target",
            "idle_seconds",
            "scale_up_window_seconds", "scale_down_window_seconds", "tensor_parallel_size", "engine_options",
            "reserved_gpus", "gpu_model", "generation", "observed_generation", "rolled_out",
            "subscription_in_force", "adapters", "created_at", "updated_at",
        ]  # fmt: skip
        read_only_fields = fields

    def get_autoscaling_explanation(self, deployment: Deployment) -> str:
        return POLICY_EXPLANATIONS[AutoscalingPolicy(deployment.autoscaling_policy)]

    def get_rolled_out(self, deployment: Deployment) -> bool:
        return deployment.observed_generation == deployment.generation

    def get_adapters(self, deployment: Deployment) -> list[dict[str, str]]:
        return [
            {"name": adapter.name, "model": adapter.model_card.slug, "served_name": adapter.served_name}
            for adapter in deployment.adapters.all()
        ]

    def get_subscription_in_force(self, deployment: Deployment) -> bool:
        """Annotated by the list and detail queries; looked up for a row fresh from a service."""
        annotated = getattr(deployment, "subscription_in_force", None)
        if annotated is not None:
            return bool(annotated)
        return subscription_in_force(deployment.organization, deployment.model_card)


class DeploymentDetailSerializer(DeploymentSerializer):
    events = serializers.SerializerMethodField()

    class Meta(DeploymentSerializer.Meta):
        fields = [*DeploymentSerializer.Meta.fields, "events"]
        read_only_fields = fields

    def get_events(self, deployment: Deployment) -> list[dict[str, Any]]:
        events = deployment.events.select_related("actor")[:50]
        return list(DeploymentEventSerializer(events, many=True).data)
