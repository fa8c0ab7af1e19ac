"""Domain rules for deployments: who may create, scale, update and delete what, and the status machine.

Views validate the shape of a request and call one function here. Each function decides inside one
transaction and enqueues Celery work on commit, so a task never sees a row that was rolled back.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from django.conf import settings
from django.contrib.auth.base_user import AbstractBaseUser
from django.contrib.auth.models import AnonymousUser, User
from django.db import transaction
from django.db.models import Count, Q, QuerySet, Sum, prefetch_related_objects
from django.utils import timezone
from rest_framework import exceptions

from learning.router_service import is_router_name
from learning.storage import CannotPresign, InvalidKey, S3Store, get_store, presigned_url
from marketplace.accounts import crypto
from marketplace.accounts.authentication import ApiKeyPrincipal
from marketplace.accounts.models import Organization, Quota
from marketplace.catalog import custom_models, fits
from marketplace.catalog.choices import CustomModelSource
from marketplace.catalog.models import CustomModel, InstanceType, ModelCard
from marketplace.subscriptions.services import require_in_force, subscription_in_force
from serving.backends.base import PermanentBackendError, TransientBackendError
from serving.choices import LIVE_STATUSES, AutoscalingPolicy, Backend, DeploymentStatus
from serving.models import Deployment, DeploymentAdapter, DeploymentEvent, UsageRecord, served_adapter_name
from serving.spec import (
    LORA_RANKS,
    AdapterSpec,
    Autoscaling,
    DeploymentSpec,
    InstanceSpec,
    ModelSpec,
    StoreSpec,
    volume_holding,
)


@dataclass(frozen=True)
class Scaling:
    min_replicas: int
    max_replicas: int
    policy: str = AutoscalingPolicy.FIXED
    target: float = 5.0
    idle_seconds: int = 900
    scale_up_window_seconds: int = 0
    scale_down_window_seconds: int = 300

    def fields(self) -> dict[str, Any]:
        """The Deployment columns these settings are stored in."""
        return {
            "min_replicas": self.min_replicas,
            "max_replicas": self.max_replicas,
            "autoscaling_policy": self.policy,
            "autoscaling_target": self.target,
            "idle_seconds": self.idle_seconds,
            "scale_up_window_seconds": self.scale_up_window_seconds,
            "scale_down_window_seconds": self.scale_down_window_seconds,
        }


def _refuse(field: str, message: str) -> exceptions.ValidationError:
    return exceptions.ValidationError({field: [message]})


def check_model_and_instance(
    card: ModelCard, instance_type: InstanceType, backend: str, *, max_model_len: int | None = None
) -> None:
    """The model must fit the instance type at `max_model_len` (or at least at its shortest deployable
    context when none is asked for; see fits.place), and the instance type must suit the backend."""
    if backend == Backend.LOCAL and instance_type.gpu_count > 0:
        raise _refuse(
            "instance_type",
            f"This platform runs deployments on this machine (SERVING_BACKEND=local), which has no GPUs: "
            f"choose a CPU instance type, or run the platform with SERVING_BACKEND=kubernetes for "
            f"{instance_type.name}.",
        )
    if backend == Backend.KUBERNETES and instance_type.gpu_count == 0:
        raise _refuse(
            "instance_type", f"{instance_type.name} has no GPUs; vLLM on Kubernetes needs a GPU instance."
        )
    if instance_type.gpu_count == 0:
        if not card.cpu_capable:
            raise _refuse("instance_type", f"{card.name} cannot run on CPU; choose a GPU instance type.")
        return
    placement = card.placement(instance_type, max_model_len=max_model_len)
    if placement.fits:
        return
    offered = (
        f"{instance_type.name} offers at most {instance_type.tensor_parallel_memory_gb} GB to one "
        f"tensor-parallel group ({instance_type.gpu_count} × {instance_type.gpu_memory_gb} GB)"
    )
    needed = placement.estimate
    if max_model_len is not None and placement.max_model_len:
        raise _refuse(
            "engine_options",
            f"{card.name} needs {needed.needed_gb} GB of GPU memory at max_model_len {max_model_len:,}; "
            f"{offered}, which holds {placement.max_model_len:,} tokens: lower max_model_len or choose "
            "a larger instance type.",
        )
    default = card.facts.default_context
    shortest = (
        f", and {needed.needed_gb} GB at the shortest it is deployed with ({needed.tokens:,})"
        if needed.tokens < default and needed.needed_gb != card.gpu_memory_gb
        else ""
    )
    raise _refuse(
        "instance_type",
        f"{card.name} needs {card.gpu_memory_gb} GB of GPU memory at its default context of {default:,} "
        f"tokens{shortest}; {offered}.",
    )


def check_servable(card: ModelCard) -> None:
    """The pinned engine must be able to serve the card at all (ModelCard.servable): a card that
    generates images or speech, or whose architecture vLLM lacks, is in the catalog but cannot be
    deployed, whatever the instance type or subscription."""
    if not card.servable:
        raise _refuse(
            "model",
            f"{card.not_servable_reason} Choose a model whose page lists the routes it serves.",
        )


def check_visible(organization: Organization, card: ModelCard) -> None:
    """Another organisation's custom model is, to this one, a model that does not exist."""
    if card.organization_id not in (None, organization.pk):
        raise _refuse("model", f"Object with slug={card.slug} does not exist.")


def _custom(card: ModelCard) -> CustomModel | None:
    return getattr(card, "custom_model", None) if card.organization_id else None


def weights_path(card: ModelCard) -> str:
    """The folder whose weights a local engine loads: a custom model's registered from one, the copy of one
    registered from an object store, or an adapter's base's; "" for the rest (the engine loads the Hugging
    Face repository)."""
    custom = _custom(card)
    if custom is not None and custom.source == CustomModelSource.ADAPTER and custom.base is not None:
        return weights_path(custom.base)
    if custom is not None and custom.source == CustomModelSource.STORE:
        return str(custom_models.store_copy_folder(card))
    return custom.path if custom is not None and custom.source == CustomModelSource.PATH else ""


def store_model(card: ModelCard) -> CustomModel | None:
    """The custom model registered from an object store whose weights `card` runs on: itself, or an
    adapter's base."""
    custom = _custom(card)
    if custom is not None and custom.source == CustomModelSource.ADAPTER and custom.base is not None:
        return store_model(custom.base)
    return custom if custom is not None and custom.source == CustomModelSource.STORE else None


def store_spec(card: ModelCard) -> StoreSpec | None:
    custom = store_model(card)
    if custom is None:
        return None
    return StoreSpec(
        uri=custom.store_uri,
        endpoint_url=custom.store_endpoint_url,
        region=custom.store_region,
        access_key_id=custom.store_access_key_id,
        secret_access_key=crypto.decrypt(custom.store_secret_encrypted),
    )


def hub_token(card: ModelCard) -> str:
    """The organisation's own read token for the private Hub repository `card` runs on (itself, or an
    adapter's base), or ""."""
    custom = _custom(card)
    if custom is not None and custom.source == CustomModelSource.ADAPTER and custom.base is not None:
        return hub_token(custom.base)
    if custom is not None and custom.source == CustomModelSource.HUB and custom.hf_token_encrypted:
        return crypto.decrypt(custom.hf_token_encrypted)
    return ""


def adapter_of(card: ModelCard) -> CustomModel | None:
    """The LoRA adapter a card is, if it is one."""
    custom = _custom(card)
    return custom if custom is not None and custom.source == CustomModelSource.ADAPTER else None


def check_runnable_here(card: ModelCard, backend: str) -> None:
    """The local backend serves only models whose weights are on this machine: those `make engine`
    prepared, and custom models registered from a folder."""
    if backend != Backend.LOCAL:
        return
    from serving.local import engine_env

    directory = engine_env.engine_dir()
    folder = weights_path(card)
    adapter = adapter_of(card)
    if folder and store_model(card) is None and not (Path(folder) / "config.json").is_file():
        raise _refuse("model", f"{card.name}'s weights are no longer in {folder}: copy them back first.")
    if adapter is not None and not (Path(adapter.path) / "adapter_config.json").is_file():
        raise _refuse("model", f"{card.name}'s adapter is no longer in {adapter.path}: copy it back first.")
    weights_slug = adapter.base.slug if adapter is not None and adapter.base is not None else card.slug
    if not engine_env.engine_python(directory).exists() or (
        not folder and engine_env.model_path(directory, weights_slug) is None
    ):
        raise _refuse(
            "model",
            f"{card.name} cannot run on this machine: the local backend serves the CPU-capable models that "
            "`make engine` prepares (SmolLM2 135M Instruct, all-MiniLM-L6-v2) and custom models registered "
            "from a folder, in the engine `make engine` installs. Run `make engine` first, or deploy to a "
            "cluster with SERVING_BACKEND=kubernetes.",
        )


# How long the URLs a cluster's engine pods fetch adapters from stay valid (SigV4's longest), and how old
# they may grow before the reconciler renews them (serving.tasks): a replica started any time in between
# finds a valid one, and the platform may be down for six days without a restart finding them expired.
ADAPTER_URL_SECONDS = 7 * 86_400
ADAPTER_URL_RENEW_SECONDS = 86_400


def in_cluster_volume(folder: str) -> bool:
    """Whether a cluster's pods can mount the folder: it lies in one of CUSTOM_MODEL_VOLUMES."""
    return volume_holding(folder, list(settings.CUSTOM_MODEL_VOLUMES.items())) is not None


def _withdrawn_store(card: ModelCard) -> str:
    """Why the card's weights may no longer be read from their object store (custom_models.
    endpoint_withdrawn), as a sentence about the card; else ""."""
    stored = store_model(card)
    withdrawn = custom_models.endpoint_withdrawn(stored) if stored is not None else ""
    return f"{card.name}'s weights cannot be read: {withdrawn}" if withdrawn else ""


def check_cluster_files(card: ModelCard, adapters: Sequence[AdapterChoice], backend: str) -> None:
    """What a cluster's engine pods read must be somewhere they can reach: weights from the Hub, from an
    object store whose endpoint is still allowed, or from a folder in one of CUSTOM_MODEL_VOLUMES (never the
    rest of the platform's disk); LoRA adapters from the platform's object store, which must then be a
    bucket (a folder store has no URL a pod can use). An adapter registered before adapters were kept there
    is kept now, from its folder."""
    if backend == Backend.LOCAL:
        return
    withdrawn = _withdrawn_store(card)
    if withdrawn:
        raise _refuse("model", withdrawn)
    folder = weights_path(card)
    if folder and store_model(card) is None and not in_cluster_volume(folder):
        raise _refuse(
            "model",
            f"{card.name} runs on weights registered from {folder}, a folder in none of the volumes a "
            "cluster's engines mount (CUSTOM_MODEL_VOLUMES): register them from an object store (source "
            '"store") or the Hugging Face Hub, or ask a platform admin to make that folder a volume.',
        )
    own = adapter_of(card)
    wanted = [("model", own)] if own is not None else []
    wanted += [("adapters", custom) for _, adapter_card in adapters if (custom := adapter_of(adapter_card))]
    if not wanted:
        return
    if not isinstance(get_store(), S3Store):
        raise _refuse(
            wanted[0][0],
            "A cluster's engines fetch LoRA adapters from the platform's object store, and this platform "
            "keeps its objects in a folder: a platform admin must set OBJECT_STORE_BUCKET first.",
        )
    for field, custom in wanted:
        custom_models.ensure_adapter_files(custom, field)


def fetches_adapters(spec: DeploymentSpec) -> bool:
    """Whether the deployment's engine pods fetch adapters by URL (so their URLs need renewing)."""
    return bool(spec.model.adapter_url or any(adapter.url for adapter in spec.adapters))


def adapter_url(custom: CustomModel) -> str:
    """A presigned GET of the adapter's archive in the platform's object store, for a cluster's engine pod.
    The archive is made now for an adapter registered before archives were kept (a deployment applied
    again without a change of adapters); a platform whose store can no longer sign is told plainly."""
    try:
        key = custom_models.ensure_adapter_files(custom)
        return presigned_url(get_store(), key, write=False, expires_seconds=ADAPTER_URL_SECONDS)
    except exceptions.ValidationError as error:
        if isinstance(error, custom_models.FilesNotKept):
            raise TransientBackendError(f"the LoRA adapter {custom.name} could not be archived") from None
        message = f"the LoRA adapter {custom.name}'s files are gone: register it again"
        raise PermanentBackendError(message, public=message) from None
    except (CannotPresign, InvalidKey):
        message = (
            f"the LoRA adapter {custom.name} cannot be fetched: the platform's object store gives no URL a "
            "pod can use (OBJECT_STORE_BUCKET)"
        )
        raise PermanentBackendError(message, public=message) from None


# Adapters one engine serves beside its model: each holds GPU (or CPU) memory for a LoRA slot of the largest
# rank, and vLLM batches them together up to --max-loras.
MAX_ADAPTERS = 16
# (the name apps call it by after `<deployment>:`, the adapter's card)
AdapterChoice = tuple[str, ModelCard]


def check_adapters(
    organization: Organization, card: ModelCard, adapters: Sequence[AdapterChoice], backend: str
) -> None:
    """Adapters a deployment of `card` may serve beside it: the organisation's own LoRA adapters registered
    on the weights the deployment serves (the card's, or, for an adapter's deployment, its base's), each
    under a name of its own, at most MAX_ADAPTERS, at a rank vLLM serves; on this machine, still on disk."""
    if len(adapters) > MAX_ADAPTERS:
        raise _refuse(
            "adapters",
            f"At most {MAX_ADAPTERS} adapters on one deployment; serve the rest from a second deployment of "
            "the same base.",
        )
    own = adapter_of(card)
    weights = own.base if own is not None and own.base is not None else card
    seen: set[str] = set()
    for index, (name, adapter_card) in enumerate(adapters, start=1):
        where = f"Adapter {index} ({name})"
        if name in seen:
            raise _refuse("adapters", f"{where}: two adapters are named {name}; give each its own name.")
        seen.add(name)
        if adapter_card.organization_id not in (None, organization.pk):
            # Another organisation's custom model is one that does not exist, in the serializer's own words.
            missing = f"Object with slug={adapter_card.slug} does not exist."
            raise exceptions.ValidationError({"adapters": {str(index - 1): {"model": [missing]}}})
        adapter = adapter_of(adapter_card)
        if adapter is None:
            raise _refuse(
                "adapters",
                f"{where}: {adapter_card.slug} is not one of your LoRA adapters; register one with "
                'source "adapter" at /api/custom-models/.',
            )
        if adapter.base_id != weights.pk:
            base = adapter.base.name if adapter.base is not None else "no base"
            raise _refuse(
                "adapters",
                f"{where}: {adapter_card.name} was trained on {base}, and this deployment serves "
                f"{weights.name}'s weights; deploy it on a deployment of {base}.",
            )
        if (adapter.lora_rank or 0) > max(LORA_RANKS):
            raise _refuse("adapters", f"{where}: rank {adapter.lora_rank} is above {max(LORA_RANKS)}.")
        if backend == Backend.LOCAL and not (Path(adapter.path) / "adapter_config.json").is_file():
            raise _refuse(
                "adapters", f"{where}: the adapter is no longer in {adapter.path}; copy it back first."
            )


def _adapter_rows(deployment: Deployment, adapters: Sequence[AdapterChoice]) -> None:
    DeploymentAdapter.objects.bulk_create(
        DeploymentAdapter(deployment=deployment, name=name, model_card=card) for name, card in adapters
    )


def resolve_tensor_parallel_size(
    card: ModelCard,
    instance_type: InstanceType,
    requested: int | None,
    *,
    max_model_len: int | None = None,
) -> int:
    """The GPUs one replica spans: the request when it holds the model at `max_model_len` (or at its
    default context), else the smallest power-of-two group that does."""
    if instance_type.gpu_count == 0:
        if requested not in (None, 1):
            raise _refuse("tensor_parallel_size", "A CPU instance runs one engine per replica: use 1.")
        return 1
    smallest = card.placement(instance_type, max_model_len=max_model_len).tensor_parallel_size
    assert smallest is not None  # check_model_and_instance ran first
    if requested is None:
        return smallest
    if requested & (requested - 1) or requested > instance_type.gpu_count:
        raise _refuse(
            "tensor_parallel_size",
            f"Must be a power of two no larger than the instance's {instance_type.gpu_count} GPUs.",
        )
    if (
        requested < smallest
        and not card.placement(
            instance_type, max_model_len=max_model_len, tensor_parallel_size=requested
        ).fits
    ):
        raise _refuse(
            "tensor_parallel_size",
            f"{card.name} needs at least {smallest} GPUs of {instance_type.gpu_memory_gb} GB to fit.",
        )
    return requested


def default_max_model_len(
    card: ModelCard, instance_type: InstanceType, tensor_parallel_size: int, options: dict[str, Any]
) -> dict[str, Any]:
    """`options` with max_model_len set when the instance cannot hold the card's default context: the
    longest context that fits on `tensor_parallel_size` GPUs. On an instance without GPUs (this machine's
    engines) it is always set, to what the CPU engine serves (fits.cpu_context), so the deployment
    records the length its engine runs with. Unchanged when the option is given or the default fits."""
    if "max_model_len" in options:
        return options
    if instance_type.gpu_count == 0:
        return {**options, "max_model_len": fits.cpu_context(card.facts)}
    placement = card.placement(instance_type, tensor_parallel_size=tensor_parallel_size)
    if not placement.fits or placement.max_model_len >= card.facts.default_context:
        return options
    return {**options, "max_model_len": placement.max_model_len}


def check_engine_options(card: ModelCard, options: dict[str, Any]) -> dict[str, Any]:
    """Options beyond their API shape: limits that depend on the model."""
    max_len = options.get("max_model_len")
    if max_len is not None and max_len > card.context_length:
        raise _refuse(
            "engine_options",
            f"max_model_len {max_len} is above {card.name}'s context length {card.context_length}.",
        )
    return options


def check_quota(
    organization: Organization,
    *,
    instance_type: InstanceType,
    max_replicas: int,
    replacing: Deployment | None = None,
) -> int:
    """Raise unless the organisation's quota has room; return the GPUs to reserve.

    Call inside a transaction: the quota row is locked (select_for_update), so concurrent requests of
    the same organisation decide one after another and can never overshoot together. A replica is a
    whole instance, so it holds all of the instance's GPUs; a replica on a CPU instance type holds one
    of the organisation's CPU replicas instead (a live deployment holds its max replicas of either).
    """
    quota = Quota.objects.select_for_update().get_or_create(organization=organization)[0]
    live = Deployment.objects.filter(organization=organization, status__in=LIVE_STATUSES)
    if replacing is not None:
        live = live.exclude(pk=replacing.pk)
    usage = _reservations(live, gpu_model=instance_type.gpu_model)
    training = _training_reservations(organization, gpu_model=instance_type.gpu_model)
    usage["total"] += training["total"]
    usage["same_model"] += training["same_model"]
    if replacing is None and usage["count"] >= quota.max_deployments:
        raise _refuse(
            "quota",
            f"The organisation already has {usage['count']} of {quota.max_deployments} deployments: "
            "delete one or ask a platform admin to raise the quota.",
        )
    if instance_type.gpu_count == 0:
        cpu_left = quota.max_cpu_replicas - usage["cpu_replicas"]
        if max_replicas > cpu_left:
            raise _refuse(
                "max_replicas",
                f"Needs {max_replicas} CPU replica{'s' if max_replicas != 1 else ''} on "
                f"{instance_type.name}, the organisation's CPU replica quota leaves {max(cpu_left, 0)} of "
                f"{quota.max_cpu_replicas}: lower max replicas, or ask a platform admin to raise the quota.",
            )
        return 0
    needed = max_replicas * instance_type.gpu_count
    model_left = quota.gpu_limit(instance_type.gpu_model) - usage["same_model"]
    if instance_type.gpu_model in quota.gpus_per_model and needed > model_left:
        raise _refuse(
            "max_replicas",
            f"Needs {needed} × {instance_type.gpu_model} ({max_replicas} × {instance_type.gpu_count} GPUs), "
            f"quota leaves {max(model_left, 0)}: lower max replicas, or ask a platform admin to raise the "
            "quota.",
        )
    total_left = quota.max_gpus - usage["total"]
    if needed > total_left:
        raise _refuse(
            "max_replicas",
            f"Needs {needed} GPUs, the organisation's GPU quota leaves {max(total_left, 0)} of "
            f"{quota.max_gpus}: "
            "lower max replicas, or ask a platform admin to raise the quota.",
        )
    return needed


def check_training_quota(organization: Organization, instance_type: InstanceType) -> int:
    """Raise unless the organisation's GPU quota has room for a training run on one `instance_type`
    (learning.tuning); return the GPUs to reserve. Like check_quota: inside a transaction, under the
    quota row's lock, counting live deployments and the training runs that hold GPUs."""
    quota = Quota.objects.select_for_update().get_or_create(organization=organization)[0]
    live = Deployment.objects.filter(organization=organization, status__in=LIVE_STATUSES)
    usage = _reservations(live, gpu_model=instance_type.gpu_model)
    training = _training_reservations(organization, gpu_model=instance_type.gpu_model)
    needed = instance_type.gpu_count
    model_left = quota.gpu_limit(instance_type.gpu_model) - usage["same_model"] - training["same_model"]
    total_left = quota.max_gpus - usage["total"] - training["total"]
    if (instance_type.gpu_model in quota.gpus_per_model and needed > model_left) or needed > total_left:
        left = min(model_left, total_left) if instance_type.gpu_model in quota.gpus_per_model else total_left
        raise _refuse(
            "instance_type",
            f"Training on {instance_type.name} needs {needed} × {instance_type.gpu_model}; the "
            f"organisation's GPU quota leaves {max(left, 0)}: wait for a run or a deployment to finish, "
            "choose a smaller instance type, or ask a platform admin to raise the quota.",
        )
    return needed


def _reservations(live: QuerySet[Deployment], *, gpu_model: str) -> dict[str, int]:
    """How many live deployments there are, the GPUs they hold in all and of `gpu_model`, and the
    replicas they may run on CPU instance types (their max replicas: what they may scale to)."""
    usage = live.aggregate(
        count=Count("id"),
        total=Sum("reserved_gpus"),
        same_model=Sum("reserved_gpus", filter=Q(gpu_model=gpu_model)),
        cpu_replicas=Sum("max_replicas", filter=Q(instance_type__gpu_count=0)),
    )
    return {name: value or 0 for name, value in usage.items()}


def _training_held(organization: Organization) -> QuerySet[Any]:
    from learning.models import TuningJob  # learning builds on serving; the quota counts both

    return TuningJob.objects.filter(organization=organization, reserved_gpus__gt=0, finished_at__isnull=True)


def _training_reservations(organization: Organization, *, gpu_model: str) -> dict[str, int]:
    """The GPUs the organisation's training runs on the cluster hold (learning.tuning), in all and of
    `gpu_model`: a run holds its instance's GPUs from creation until its Job is done."""
    usage = _training_held(organization).aggregate(
        total=Sum("reserved_gpus"), same_model=Sum("reserved_gpus", filter=Q(gpu_model=gpu_model))
    )
    return {name: value or 0 for name, value in usage.items()}


@dataclass(frozen=True)
class QuotaUse:
    """An organisation's quota and how much of it is in use, for people to read (nothing is locked)."""

    quota: Quota
    deployments: int
    gpus: int
    gpus_by_model: dict[str, int]  # every GPU model with a limit of its own or in use
    cpu_replicas: int  # max replicas of live deployments on CPU instance types
    tokens_this_month: int


def quota_use(organization: Organization) -> QuotaUse:
    quota = Quota.objects.get_or_create(organization=organization)[0]
    live = Deployment.objects.filter(organization=organization, status__in=LIVE_STATUSES)
    usage = _reservations(live, gpu_model="")
    by_model = dict.fromkeys(quota.gpus_per_model, 0)
    for row in live.exclude(gpu_model="").values("gpu_model").annotate(gpus=Sum("reserved_gpus")):
        by_model[row["gpu_model"]] = row["gpus"] or 0
    for row in _training_held(organization).values("gpu_model").annotate(gpus=Sum("reserved_gpus")):
        by_model[row["gpu_model"]] = by_model.get(row["gpu_model"], 0) + (row["gpus"] or 0)
        usage["total"] += row["gpus"] or 0
    month_start = timezone.now().replace(day=1, hour=0, minute=0, second=0, microsecond=0)
    tokens = UsageRecord.objects.filter(organization=organization, created_at__gte=month_start).aggregate(
        prompt=Sum("prompt_tokens"), completion=Sum("completion_tokens")
    )
    return QuotaUse(
        quota=quota,
        deployments=usage["count"],
        gpus=usage["total"],
        gpus_by_model=dict(sorted(by_model.items())),
        cpu_replicas=usage["cpu_replicas"],
        tokens_this_month=(tokens["prompt"] or 0) + (tokens["completion"] or 0),
    )


# Who asks for a change: a signed-in person (request.user), an API key (DRF's request.user for a key),
# or None when the platform acts (the reconciler, a worker, a budget).
Actor = AbstractBaseUser | AnonymousUser | ApiKeyPrincipal | None


def actor_fields(actor: Actor) -> dict[str, Any]:
    """The DeploymentEvent columns that say who acted: a person by account and username, an API key by
    its name and prefix; nothing for the platform (or anyone not signed in)."""
    if isinstance(actor, ApiKeyPrincipal):
        key = actor.api_key
        return {"actor": None, "actor_name": f"API key {key.name} ({key.prefix}…)"[:200]}
    if isinstance(actor, AbstractBaseUser) and actor.pk is not None:
        return {"actor": actor, "actor_name": actor.get_username()[:200]}
    return {}


def record(deployment: Deployment, status: str, message: str, *, actor: Actor = None) -> None:
    """Add a line to the deployment's history; `actor` is who asked (None: the platform)."""
    DeploymentEvent.objects.create(
        deployment=deployment, status=status, message=message, **actor_fields(actor)
    )


def transition(
    deployment_id: int,
    *,
    to: DeploymentStatus,
    message: str,
    allowed_from: tuple[str, ...] | None = None,
    generation: int | None = None,
    actor: Actor = None,
    **fields: Any,
) -> bool:
    """Move a deployment's status by a conditional update, writing an event when status or message change.

    Returns False (and changes nothing) when the row is not in one of `allowed_from`, or no longer at
    `generation`: another worker got there first, the deployment was deleted, or changed since the
    caller looked (an assessment of an older generation must not mark a newer one rolled out).
    The event names `actor`, the person who asked for the move, or the platform when None.

    When neither status nor message change (replica counts and endpoints do, on most reconcile passes),
    one compare-and-set UPDATE does it, with no lock and no event.
    """
    if allowed_from is None or to in allowed_from:
        same = Deployment.objects.filter(pk=deployment_id, status=to, status_message=message)
        if generation is not None:
            same = same.filter(generation=generation)
        if same.update(**fields, updated_at=timezone.now()) == 1:
            return True
    with transaction.atomic():
        row = Deployment.objects.select_for_update().filter(pk=deployment_id).first()
        if row is None or (allowed_from is not None and row.status not in allowed_from):
            return False
        if generation is not None and row.generation != generation:
            return False
        changed = row.status != to or row.status_message != message
        updates: dict[str, Any] = {"status": to, "status_message": message, **fields}
        if row.status != to:
            updates["status_changed_at"] = timezone.now()
        Deployment.objects.filter(pk=deployment_id).update(**updates, updated_at=timezone.now())
        if changed:
            record(row, to, message, actor=actor)
        return True


def reapply_deployments_of(card: ModelCard, why: str) -> int:
    """Apply again, on commit, every live deployment that runs `card`'s weights (the card, or an adapter on
    it): what changes where the weights are read from without changing what runs. A FAILED one goes back to
    PENDING, saying `why`, so its page follows the new attempt. Returns how many."""
    rows = list(
        Deployment.objects.filter(
            Q(model_card=card) | Q(model_card__custom_model__base=card), status__in=LIVE_STATUSES
        ).values_list("pk", "status")
    )
    for deployment_id, status in rows:
        if status == DeploymentStatus.FAILED:
            transition(
                deployment_id,
                to=DeploymentStatus.PENDING,
                message=why,
                allowed_from=(DeploymentStatus.FAILED,),
            )
        _enqueue("provision_deployment", deployment_id)
    return len(rows)


def _enqueue(task_name: str, deployment_id: int) -> None:
    from serving import tasks

    task = getattr(tasks, task_name)
    transaction.on_commit(lambda: task.delay(deployment_id))


def require_subscribed(organization: Organization, card: ModelCard) -> None:
    """Refuse, naming `model`, unless `organization`'s subscription to `card` is in force."""
    if not subscription_in_force(organization, card):
        raise _refuse(
            "model",
            f"{organization.name} is not subscribed to {card.name} under its current license: "
            "subscribe first "
            "(an owner or admin accepts the license on the model's page).",
        )


def create_deployment(
    *,
    organization: Organization,
    user: User | None,
    name: str,
    card: ModelCard,
    instance_type: InstanceType,
    scaling: Scaling,
    engine_options: dict[str, Any],
    tensor_parallel_size: int | None = None,
    actor: Actor = None,
    adapters: Sequence[AdapterChoice] = (),
) -> Deployment:
    """Admit and save a deployment in PENDING, then provision it once the transaction commits. Its first
    history entry names `actor` (who asked: the person, or an API key), else `user`.

    The subscription is checked again once the organisation's quota row is locked, the lock unsubscribing
    takes too: an unsubscribe either commits first (and this is refused) or waits and then sees this
    deployment (and is refused), so no deployment slips in under a cancelled subscription."""
    backend = settings.SERVING_BACKEND
    check_visible(organization, card)
    check_servable(card)  # first: neither subscribing nor another instance type would help
    require_subscribed(organization, card)  # early, so this refusal comes before any other
    max_model_len = engine_options.get("max_model_len")
    check_model_and_instance(card, instance_type, backend, max_model_len=max_model_len)
    tp = resolve_tensor_parallel_size(card, instance_type, tensor_parallel_size, max_model_len=max_model_len)
    check_engine_options(card, engine_options)
    engine_options = default_max_model_len(card, instance_type, tp, engine_options)
    check_scaling(scaling, backend)
    check_runnable_here(card, backend)
    check_adapters(organization, card, adapters, backend)
    check_cluster_files(card, adapters, backend)
    with transaction.atomic():
        reserved = check_quota(organization, instance_type=instance_type, max_replicas=scaling.max_replicas)
        require_subscribed(organization, card)  # again, now that unsubscribing waits for us
        if (
            Deployment.objects.filter(organization=organization, name=name)
            .exclude(status=DeploymentStatus.DELETED)
            .exists()
        ):
            raise _refuse("name", f"{organization.slug} already has a deployment named '{name}'.")
        if is_router_name(organization.pk, name):
            # One name never means two things to the gateway (a router refuses a deployment's name too).
            raise _refuse(
                "name",
                f"{organization.slug} already has a prompt router named {name}; choose another name, "
                "or delete or rename the router (see /api/routers/).",
            )
        deployment = Deployment.objects.create(
            organization=organization,
            name=name,
            model_card=card,
            instance_type=instance_type,
            backend=backend,
            **scaling.fields(),
            tensor_parallel_size=tp,
            engine_options=engine_options,
            reserved_gpus=reserved,
            gpu_model=instance_type.gpu_model if instance_type.gpu_count else "",
            created_by=user,
            status=DeploymentStatus.PENDING,
            status_message="Waiting for a worker to create the engine.",
        )
        _adapter_rows(deployment, adapters)
        record(
            deployment,
            DeploymentStatus.PENDING,
            f"Requested {card.name} on {instance_type.name}.",
            actor=user if actor is None else actor,
        )
        _enqueue("provision_deployment", deployment.pk)
    return deployment


def check_scaling(scaling: Scaling, backend: str) -> None:
    if scaling.min_replicas > scaling.max_replicas:
        raise _refuse("min_replicas", "Must not be above max_replicas.")
    if scaling.policy == AutoscalingPolicy.FIXED and scaling.min_replicas != scaling.max_replicas:
        raise _refuse("max_replicas", "With fixed replicas, min and max must be equal.")
    if scaling.policy == AutoscalingPolicy.SCALE_TO_ZERO:
        if scaling.min_replicas != 0:
            raise _refuse("min_replicas", "Scale to zero needs min_replicas 0.")
        if backend == Backend.KUBERNETES and not settings.KEDA_ENABLED:
            raise _refuse(
                "autoscaling_policy", "Scale to zero needs KEDA, and this platform runs without it."
            )
    elif scaling.min_replicas == 0:
        raise _refuse("min_replicas", "Only the scale-to-zero policy may run zero replicas.")
    if scaling.policy == AutoscalingPolicy.KV_CACHE and not 0 < scaling.target < 1:
        raise _refuse("autoscaling_target", "For KV-cache pressure, a fraction between 0 and 1 (e.g. 0.8).")
    if backend == Backend.LOCAL and scaling.policy not in (AutoscalingPolicy.FIXED,):
        raise _refuse(
            "autoscaling_policy",
            "This machine runs fixed replicas only; autoscaling needs the kubernetes backend.",
        )
    if backend == Backend.LOCAL:
        check_machine_cores(scaling.max_replicas)


def check_machine_cores(max_replicas: int) -> None:
    """Refuse at once what this machine can never run: a local replica keeps cores to itself, so no more
    replicas than it has cores (fewer may run while other deployments hold some: those wait, and their
    status says so)."""
    from serving.local import capacity

    cores = len(capacity.allowed_cores())
    most = cores // capacity.CORES_PER_REPLICA
    if max_replicas > most:
        raise _refuse(
            "max_replicas",
            f"This machine has {cores} CPU core{'s' if cores != 1 else ''} and each replica keeps "
            f"{capacity.CORES_PER_REPLICA} to itself, so at most {most} replica{'s' if most != 1 else ''} "
            "can run here: lower max replicas, or deploy to a cluster with SERVING_BACKEND=kubernetes.",
        )


EDITABLE = (DeploymentStatus.PENDING, DeploymentStatus.PROVISIONING, DeploymentStatus.READY,
            DeploymentStatus.UPDATING, DeploymentStatus.FAILED)  # fmt: skip


def scale_deployment(deployment: Deployment, scaling: Scaling, *, actor: Actor = None) -> Deployment:
    """Change replica bounds and policy; quota is checked again for the new maximum. While the model's
    subscription is not in force (cancelled, or changed terms not yet accepted) it may shrink, not grow.
    Asking for the settings it already has changes nothing and records nothing. The history entry names
    `actor` (None: the platform, as when a budget scales down)."""
    check_scaling(scaling, deployment.backend)
    with transaction.atomic():
        row = Deployment.objects.select_for_update().get(pk=deployment.pk)
        if row.status not in EDITABLE:
            raise _refuse("status", f"A {row.get_status_display().lower()} deployment cannot be scaled.")
        if all(getattr(row, name) == value for name, value in scaling.fields().items()):
            return row  # nothing changes: no history entry, no work for the backend
        if scaling.min_replicas > row.min_replicas or scaling.max_replicas > row.max_replicas:
            require_in_force(row.organization, row.model_card, refused="this deployment cannot be scaled up")
        reserved = check_quota(
            row.organization,
            instance_type=row.instance_type,
            max_replicas=scaling.max_replicas,
            replacing=row,
        )
        Deployment.objects.filter(pk=row.pk).update(
            **scaling.fields(),
            reserved_gpus=reserved,
            updated_at=timezone.now(),
        )
        record(
            row,
            row.status,
            f"Scaling to {scaling.min_replicas}–{scaling.max_replicas} replicas ({scaling.policy}).",
            actor=actor,
        )
        _enqueue("scale_deployment", row.pk)
    row.refresh_from_db()
    return row


def update_deployment(
    deployment: Deployment,
    *,
    instance_type: InstanceType | None = None,
    engine_options: dict[str, Any] | None = None,
    tensor_parallel_size: int | None = None,
    adapters: Sequence[AdapterChoice] | None = None,
    actor: Actor = None,
) -> Deployment:
    """Change what runs (engine options, instance type, the adapters served beside the model); the backend
    rolls it out as a new generation. Refused while the model's subscription is not in force. The history
    entry names `actor`."""
    with transaction.atomic():
        row = (
            Deployment.objects.select_for_update()
            .select_related("model_card", "instance_type")
            .get(pk=deployment.pk)
        )
        if row.status not in EDITABLE:
            raise _refuse("status", f"A {row.get_status_display().lower()} deployment cannot be updated.")
        require_in_force(row.organization, row.model_card, refused="this deployment cannot be updated")
        new_instance = instance_type or row.instance_type
        options = check_engine_options(
            row.model_card, row.engine_options if engine_options is None else engine_options
        )
        # The same fit as at creation, at the context the deployment will run with.
        max_model_len = options.get("max_model_len")
        check_model_and_instance(row.model_card, new_instance, row.backend, max_model_len=max_model_len)
        tp_request = tensor_parallel_size if tensor_parallel_size is not None else (
            row.tensor_parallel_size if instance_type is None else None
        )  # fmt: skip
        tp = resolve_tensor_parallel_size(
            row.model_card, new_instance, tp_request, max_model_len=max_model_len
        )
        reserved = check_quota(
            row.organization, instance_type=new_instance, max_replicas=row.max_replicas, replacing=row
        )
        served = [(adapter.name, adapter.model_card) for adapter in row.adapters.select_related("model_card")]
        if adapters is not None:
            check_adapters(row.organization, row.model_card, adapters, row.backend)
            check_cluster_files(row.model_card, adapters, row.backend)
        new_adapters = served if adapters is None else adapters
        if (new_instance.pk, tp, options, _pairs(new_adapters)) == (
            row.instance_type_id,
            row.tensor_parallel_size,
            row.engine_options,
            _pairs(served),
        ):
            return row  # nothing changes: no new generation, no rollout
        if adapters is not None:
            row.adapters.all().delete()
            _adapter_rows(row, adapters)
        Deployment.objects.filter(pk=row.pk).update(
            instance_type=new_instance,
            tensor_parallel_size=tp,
            engine_options=options,
            reserved_gpus=reserved,
            gpu_model=new_instance.gpu_model if new_instance.gpu_count else "",
            generation=row.generation + 1,
            updated_at=timezone.now(),
        )
        transition(
            row.pk,
            to=DeploymentStatus.UPDATING,
            message=f"Rolling out a change on {new_instance.name}.",
            actor=actor,
        )
        _enqueue("provision_deployment", row.pk)
    row.refresh_from_db()
    return row


def _pairs(adapters: Sequence[AdapterChoice]) -> list[tuple[str, int]]:
    return sorted((name, card.pk) for name, card in adapters)


def delete_deployment(deployment: Deployment, *, actor: Actor = None) -> Deployment:
    """Mark for deletion (which frees its quota at once) and remove its objects on commit. Idempotent.
    The history entry names `actor`."""
    with transaction.atomic():
        moved = transition(
            deployment.pk,
            to=DeploymentStatus.DELETING,
            message="Removing the engine and its objects.",
            allowed_from=LIVE_STATUSES,
            reserved_gpus=0,
            actor=actor,
        )
        if moved:
            _enqueue("delete_deployment", deployment.pk)
    deployment.refresh_from_db()
    return deployment


def _adapter_fields(card: ModelCard) -> dict[str, Any]:
    adapter = adapter_of(card)
    if adapter is None or adapter.base is None:
        return {}
    return {
        "base_slug": adapter.base.slug,
        "adapter_path": adapter.path,
        "adapter_rank": adapter.lora_rank or 0,
    }


ADAPTERS = "adapters__model_card__custom_model"


def served_adapters(deployment: Deployment) -> list[DeploymentAdapter]:
    """The adapters served beside the model, read once per row (a page that shows them has them already)."""
    prefetch_related_objects([deployment], ADAPTERS)
    return list(deployment.adapters.all())


def model_spec(card: ModelCard) -> ModelSpec:
    return ModelSpec(
        slug=card.slug,
        huggingface_repo=card.huggingface_repo,
        revision=card.revision,
        gated=card.gated,
        parameters=card.parameters,
        gpu_memory_gb=card.gpu_memory_gb,
        context_length=card.context_length,
        routes=card.routes,
        modalities_in=tuple(card.modalities_in),
        weights_path=weights_path(card),
        store=store_spec(card),
        hub_token=hub_token(card),
        **_adapter_fields(card),
    )


def instance_spec(instance: InstanceType) -> InstanceSpec:
    return InstanceSpec(
        slug=instance.slug,
        gpu_count=instance.gpu_count,
        gpu_memory_gb=instance.gpu_memory_gb,
        gpu_product=instance.gpu_product,
        vcpu=instance.vcpu,
        memory_gb=instance.memory_gb,
        node_labels=dict(instance.node_labels),
    )


# What stands for an adapter's URL in a spec built to be shown, not applied (the Secret that would hold it
# is shown redacted anyway): the objects keep their shape, and showing them signs nothing.
UNSIGNED_URL = "<signed when applied>"


def spec_for(deployment: Deployment, *, sign: bool = True) -> DeploymentSpec:
    """The plain-data spec every builder and backend works from. On a cluster, adapters come with presigned
    URLs of their archives; `sign=False` (a page or the manifests shown) puts UNSIGNED_URL in their place."""
    card, instance = deployment.model_card, deployment.instance_type
    # The card's defaults, overridden by what the deployment chose.
    options = {**card.engine_defaults, **deployment.engine_options}

    def url_of(adapter: CustomModel) -> str:
        """Where a cluster's engine pod fetches the adapter from (serving.manifests.fetched_adapters)."""
        if deployment.backend == Backend.LOCAL:
            return ""  # this machine's engines read its folder
        return adapter_url(adapter) if sign else UNSIGNED_URL

    model = model_spec(card)
    own = adapter_of(card)
    if own is not None:
        model = replace(model, adapter_url=url_of(own))
    withdrawn = _withdrawn_store(card) if sign and deployment.backend != Backend.LOCAL else ""
    if withdrawn:  # the engines would read an endpoint the platform no longer allows: applied no more
        raise PermanentBackendError(withdrawn, public=withdrawn)
    return DeploymentSpec(
        deployment_id=deployment.pk,
        name=deployment.name,
        organization=deployment.organization.slug,
        generation=deployment.generation,
        model=model,
        instance=instance_spec(instance),
        autoscaling=Autoscaling(
            policy=deployment.autoscaling_policy,
            min_replicas=deployment.min_replicas,
            max_replicas=deployment.max_replicas,
            target=deployment.autoscaling_target,
            idle_seconds=deployment.idle_seconds,
            scale_up_window_seconds=deployment.scale_up_window_seconds,
            scale_down_window_seconds=deployment.scale_down_window_seconds,
        ),
        tensor_parallel_size=deployment.tensor_parallel_size,
        adapters=tuple(
            AdapterSpec(
                served_name=served_adapter_name(deployment.name, adapter.name),
                path=adapter.model_card.custom_model.path,
                rank=adapter.model_card.custom_model.lora_rank or 0,
                url=url_of(adapter.model_card.custom_model),
            )
            for adapter in served_adapters(deployment)
        ),
        engine_options=options,
    )
