"""Custom models: an organisation registers its own weights as a card only it sees and deploys.

Three sources, one outcome (a CustomModel and its private ModelCard, filled from the files):
1. `register_from_hub`: a Hugging Face repository at a pinned commit (40 hex digits); a private
   repository's token is kept encrypted (marketplace.accounts.crypto).
2. `register_from_path`: a folder of Hugging Face-format weights under one of CUSTOM_MODEL_ROOTS.
3. `register_from_store`: a folder of Hugging Face-format weights in an S3-compatible object store
   (`s3://bucket/prefix`, on AWS S3 or an endpoint of CUSTOM_MODEL_STORE_ENDPOINTS), read with the
   organisation's own key (its secret kept encrypted) through ranged GETs: config.json and the safetensors
   headers, never the weights. Engines on a cluster stream the weights from there (vLLM's Run:ai streamer);
   on this machine the worker copies them first (`copy_store_weights`).
4. `register_adapter`: a LoRA adapter folder on a base model (a catalog card or another custom model of
   the organisation), whose `base_model_name_or_path` must be that base. Its files are also kept in the
   platform's object store as one archive (`keep_adapter_files`), which a cluster's engine pods fetch, so
   the adapter outlives the disk it was registered from (a worker's, for a trained one).

The card's memory figures come from the catalog's own formula (fits.py), so a custom model fits, takes
quota and is refused exactly like a catalog card. It needs no license acceptance: registering it gives
its organisation a subscription in force to it (the one rule deploying checks), accepted by whoever
registered it. Each refusal is a DRF ValidationError naming the field, in the voice of serving.services.
"""

from __future__ import annotations

import errno
import fcntl
import io
import json
import logging
import os
import re
import shutil
import tarfile
import tempfile
import threading
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

from django.conf import settings
from django.contrib.auth.models import User
from django.db import IntegrityError, transaction
from django.db.models import Q
from django.utils import timezone
from rest_framework import exceptions

from learning.storage import ObjectNotFound, StoreAccessError, StoreFolder, get_store
from marketplace.accounts import crypto
from marketplace.accounts.models import Organization
from marketplace.api import Conflict
from marketplace.catalog import fits, weights
from marketplace.catalog.choices import CommercialUse, CustomModelSource
from marketplace.catalog.models import CustomModel, License, ModelCard, Provider

log = logging.getLogger(__name__)

NAME = re.compile(r"\A[a-z0-9](?:[a-z0-9-]{0,38}[a-z0-9])?\Z")
REVISION = re.compile(r"\A[0-9a-f]{40}\Z")
REGION = re.compile(r"\A[a-z0-9](?:[a-z0-9-]{0,62})\Z")
REPO = re.compile(r"\A[A-Za-z0-9][A-Za-z0-9_.-]{0,95}/[A-Za-z0-9_.-]{1,96}\Z")
# The catalog's own rule for what runs on CPU (the loader refuses cpu_capable above it).
CPU_CAPABLE_MAX_PARAMETERS = 2_000_000_000
PROVIDER_SLUG = "custom"
LICENSE_IDENTIFIER = "custom"
LICENSE_TEXT = (
    "These weights were registered by the organisation that deploys them: their terms are that "
    "organisation's own, and nothing here needs accepting."
)
# What a card of each engine architecture kind (serving.spec.ARCHITECTURE_KINDS) serves.
KIND_CARD: dict[str, dict[str, list[str]]] = {
    "generate": {"modalities_in": ["text"], "modalities_out": ["text"]},
    "multimodal": {
        "tasks": ["vision-language"],
        "modalities_in": ["text", "image"],
        "modalities_out": ["text"],
    },
    "embedding": {"tasks": ["embedding"], "modalities_in": ["text"], "modalities_out": ["embedding"]},
    "classification": {"tasks": ["reranking"], "modalities_in": ["text"], "modalities_out": ["score"]},
}


def _refuse(field: str, message: str) -> exceptions.ValidationError:
    return exceptions.ValidationError({field: [message]})


def card_slug(organization: Organization, name: str) -> str:
    """Unique across the catalog (no catalog slug starts with "custom-") and stable under renames of
    the organisation."""
    return f"custom-{organization.pk}-{name}"


def check_name(organization: Organization, name: str) -> None:
    if not NAME.match(name):
        raise _refuse(
            "name",
            "1 to 40 lowercase letters, digits and hyphens, starting and ending with a letter or digit.",
        )
    if CustomModel.objects.filter(organization=organization, name=name).exists():
        raise _refuse("name", f"{organization.slug} already has a custom model named '{name}'.")
    if ModelCard.every_card.filter(slug=card_slug(organization, name)).exists():
        raise _refuse("name", f"The name '{name}' is taken; choose another.")


def allowed_folder(path: str, field: str = "path") -> Path:
    """An absolute folder under one of CUSTOM_MODEL_ROOTS (symbolic links resolved first, so a link cannot
    lead out of them)."""
    if not path.startswith("/"):
        raise _refuse(field, "An absolute path to a folder, e.g. /models/my-model.")
    folder = Path(path).resolve()
    copies = store_copies_root().resolve()
    if folder == copies or copies in folder.parents:
        # Another organisation's copies of its store weights, whatever CUSTOM_MODEL_ROOTS says.
        raise _refuse(field, f"{path} holds this platform's copies of models read from object stores.")
    runs = tuning_runs_root().resolve()
    if folder == runs or runs in folder.parents:
        # Tuning jobs' data and adapters, each registered by its own job (register_adapter's run_folder).
        raise _refuse(field, f"{path} holds this platform's tuning runs; a job registers its own adapter.")
    roots = [Path(root).resolve() for root in settings.CUSTOM_MODEL_ROOTS]
    if not any(folder == root or root in folder.parents for root in roots):
        raise _refuse(
            field,
            f"{path} is outside the folders custom models are registered from "
            f"({', '.join(str(root) for root in roots)}): copy the weights there first.",
        )
    return folder


def _catalog_rows() -> tuple[Provider, License]:
    provider, _ = Provider.objects.get_or_create(slug=PROVIDER_SLUG, defaults={"name": "Custom models"})
    license, _ = License.objects.get_or_create(
        identifier=LICENSE_IDENTIFIER,
        defaults={"name": "Own weights", "text": LICENSE_TEXT, "commercial_use": CommercialUse.ALLOWED},
    )
    return provider, license


def _memory(facts: fits.ModelFacts) -> dict[str, int]:
    return {
        "gpu_memory_gb": fits.estimate(facts).needed_gb,
        "min_gpu_memory_gb": fits.estimate(facts, facts.min_context).needed_gb,
    }


def card_values(files: weights.ModelFiles) -> dict[str, Any]:
    """The card's columns from what the files say (memory by fits.py, as for catalog cards)."""
    kind = KIND_CARD[files.kind]
    generative = files.kind in ("generate", "multimodal")
    tasks = kind.get("tasks") or (["chat"] if files.chat_template else ["text-generation"])
    layers = files.layers if generative else None  # encoders keep no KV cache: fits' older rule
    facts = fits.ModelFacts(
        parameters=files.parameters,
        context_length=files.context_length,
        layers=layers,
        kv_heads=files.kv_heads if generative else None,
        head_dim=files.head_dim if generative else None,
        cpu_capable=files.parameters <= CPU_CAPABLE_MAX_PARAMETERS,
    )
    return {
        "tasks": tasks,
        "modalities_in": kind["modalities_in"],
        "modalities_out": kind["modalities_out"],
        "parameters": files.parameters,
        "context_length": files.context_length,
        "dtype": files.dtype,
        "num_hidden_layers": facts.layers,
        "num_key_value_heads": facts.kv_heads,
        "head_dim": facts.head_dim,
        "cpu_capable": facts.cpu_capable,
        **_memory(facts),
    }


def _save(
    *,
    organization: Organization,
    user: User | None,
    name: str,
    card_fields: dict[str, Any],
    custom_fields: dict[str, Any],
) -> CustomModel:
    """Save the card, the custom model and the organisation's subscription to it, all or nothing."""
    from marketplace.subscriptions.models import LicenseAcceptance, Subscription

    provider, license = _catalog_rows()
    try:
        with transaction.atomic():
            card = ModelCard(
                slug=card_slug(organization, name),
                name=name,
                provider=provider,
                family="Custom",
                license=license,
                license_name=license.name,
                organization=organization,
                **{"gated": False, **card_fields},
            )
            card.save()
            custom = CustomModel.objects.create(
                organization=organization, name=name, card=card, created_by=user, **custom_fields
            )
            now = timezone.now()
            subscription = Subscription.objects.create(
                organization=organization,
                model_card=card,
                license_sha256=card.license_sha256,
                accepted_by=user,
                accepted_at=now,
            )
            LicenseAcceptance.objects.create(
                subscription=subscription,
                license_identifier=license.identifier,
                license_sha256=card.license_sha256,
                accepted_by=user,
                accepted_at=now,
            )
    except IntegrityError:  # the same name registered at the same moment
        raise _refuse("name", f"{organization.slug} already has a custom model named '{name}'.") from None
    return custom


def register_from_hub(
    *,
    organization: Organization,
    user: User | None,
    name: str,
    huggingface_repo: str,
    revision: str,
    hf_token: str = "",
    summary: str = "",
) -> CustomModel:
    check_name(organization, name)
    if not REPO.match(huggingface_repo):
        raise _refuse("huggingface_repo", "A Hugging Face repository id: owner/name.")
    if not REVISION.match(revision):
        raise _refuse(
            "revision",
            "A commit: 40 hexadecimal digits (a branch or tag can move, so the weights would not be pinned).",
        )
    try:
        files = weights.read_hub(huggingface_repo, revision, hf_token or None)
    except weights.WeightsError as error:
        raise _refuse("huggingface_repo", error.message) from None
    return _save(
        organization=organization,
        user=user,
        name=name,
        card_fields={
            **card_values(files),
            "summary": summary,
            "huggingface_repo": huggingface_repo,
            "revision": revision,
            "gated": None if hf_token else False,
        },
        custom_fields={
            "source": CustomModelSource.HUB,
            "huggingface_repo": huggingface_repo,
            "revision": revision,
            "architecture": files.architecture,
            "hf_token_encrypted": crypto.encrypt(hf_token) if hf_token else "",
            "facts": files.as_facts(),
        },
    )


def register_from_path(
    *, organization: Organization, user: User | None, name: str, path: str, summary: str = ""
) -> CustomModel:
    check_name(organization, name)
    folder = allowed_folder(path)
    try:
        files = weights.read_folder(folder)
    except weights.WeightsError as error:
        raise _refuse("path", error.message) from None
    return _save(
        organization=organization,
        user=user,
        name=name,
        card_fields={**card_values(files), "summary": summary, "huggingface_repo": str(folder)},
        custom_fields={
            "source": CustomModelSource.PATH,
            "path": str(folder),
            "architecture": files.architecture,
            "facts": files.as_facts(),
        },
    )


def allowed_endpoints() -> list[str]:
    """CUSTOM_MODEL_STORE_ENDPOINTS as they are compared (AWS S3, "", is always allowed besides)."""
    return [item.rstrip("/") for item in settings.CUSTOM_MODEL_STORE_ENDPOINTS]


def _endpoint(endpoint_url: str) -> str:
    """The endpoint as the settings list it ("" for AWS S3), or a refusal naming the allowed ones."""
    endpoint = endpoint_url.strip().rstrip("/")
    allowed = allowed_endpoints()
    if endpoint and endpoint not in allowed:
        choices = ", ".join(allowed) if allowed else "none besides AWS S3"
        raise _refuse(
            "endpoint_url",
            f"{endpoint} is not an object store this platform reads custom models from ({choices}): leave it "
            "empty for AWS S3, or ask a platform admin to add it to CUSTOM_MODEL_STORE_ENDPOINTS.",
        )
    return endpoint


def endpoint_withdrawn(custom: CustomModel) -> str:
    """Why the model's weights may no longer be read, when a platform admin has taken its store's endpoint
    off CUSTOM_MODEL_STORE_ENDPOINTS since it was registered; else ""."""
    endpoint = custom.store_endpoint_url
    if endpoint and endpoint not in allowed_endpoints():
        return (
            f"{endpoint} is no longer an object store this platform reads custom models from "
            "(CUSTOM_MODEL_STORE_ENDPOINTS): ask a platform admin."
        )
    return ""


def store_folder(
    custom: CustomModel, *, access_key_id: str | None = None, secret_access_key: str | None = None
) -> StoreFolder:
    """The object-store folder a custom model was registered from, reached with the organisation's key (or
    the one given); StoreAccessError when its endpoint was withdrawn (endpoint_withdrawn)."""
    withdrawn = endpoint_withdrawn(custom)
    if withdrawn:
        raise StoreAccessError(withdrawn)
    endpoint = custom.store_endpoint_url
    return StoreFolder.connect(
        uri=custom.store_uri,
        endpoint_url=endpoint,
        region=custom.store_region,
        access_key_id=custom.store_access_key_id if access_key_id is None else access_key_id,
        secret_access_key=crypto.decrypt(custom.store_secret_encrypted)
        if secret_access_key is None
        else secret_access_key,
    )


def register_from_store(
    *,
    organization: Organization,
    user: User | None,
    name: str,
    uri: str,
    access_key_id: str,
    secret_access_key: str,
    endpoint_url: str = "",
    region: str = "",
    summary: str = "",
) -> CustomModel:
    check_name(organization, name)
    endpoint = _endpoint(endpoint_url)
    if region and not REGION.match(region):
        raise _refuse("region", "A region name: lowercase letters, digits and hyphens (us-east-1), or empty.")
    try:
        folder = StoreFolder.connect(
            uri=uri,
            endpoint_url=endpoint,
            region=region,
            access_key_id=access_key_id,
            secret_access_key=secret_access_key,
        )
    except ValueError as error:
        raise _refuse("uri", str(error)) from None
    try:
        stored = folder.files()
        files = weights.read_store(folder, stored)
    except weights.WeightsError as error:
        raise _refuse("uri", error.message) from None
    except StoreAccessError as error:
        raise _refuse("access_key_id" if error.about_the_key else "uri", error.message) from None
    copied = {name: file.size for name, file in stored.items() if copied_file(name)}
    return _save(
        organization=organization,
        user=user,
        name=name,
        card_fields={**card_values(files), "summary": summary, "huggingface_repo": folder.uri},
        custom_fields={
            "source": CustomModelSource.STORE,
            "store_uri": folder.uri,
            "store_endpoint_url": endpoint,
            "store_region": region,
            "store_access_key_id": access_key_id,
            "store_secret_encrypted": crypto.encrypt(secret_access_key),
            "architecture": files.architecture,
            "facts": {**files.as_facts(), "files": copied, "bytes": sum(copied.values())},
        },
    )


def replace_store_key(custom: CustomModel, *, access_key_id: str, secret_access_key: str) -> CustomModel:
    """Give a model registered from an object store a new read key (the old one rotated or revoked). The
    key must list the folder and read its config.json before it is kept; the model's live deployments are
    applied again, so a cluster's key Secret holds the new key for every engine that starts from then on."""
    from serving import services

    if custom.source != CustomModelSource.STORE:
        raise _refuse("source", f"{custom.name} is not read from an object store: it has no key to replace.")
    try:
        folder = store_folder(custom, access_key_id=access_key_id, secret_access_key=secret_access_key)
        listed = folder.files()  # what copies and vLLM's streamer do first, then a read of a file
        if weights.CONFIG not in listed:
            raise _refuse("uri", f"{weights.CONFIG} is no longer in {custom.store_uri}.")
        folder.read(weights.CONFIG)
    except StoreAccessError as error:
        raise _refuse("access_key_id" if error.about_the_key else "uri", error.message) from None
    with transaction.atomic():
        CustomModel.objects.filter(pk=custom.pk).update(
            store_access_key_id=access_key_id, store_secret_encrypted=crypto.encrypt(secret_access_key)
        )
        services.reapply_deployments_of(custom.card, f"Applying again with {custom.name}'s new read key.")
    custom.refresh_from_db()
    return custom


# What an engine loads from a model's folder: not the pickled weights some repositories carry beside the
# safetensors (vLLM prefers safetensors, and a copy of both would double the disk), nor hidden files.
SKIPPED_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".h5", ".msgpack", ".gguf", ".onnx")


def copied_file(name: str) -> bool:
    return not name.startswith(".") and not name.endswith(SKIPPED_SUFFIXES)


def store_copies_root() -> Path:
    return Path(settings.DATA_DIR) / "store-copies"


def tuning_runs_root() -> Path:
    """Where tuning jobs keep their runs (learning.tuning.work_dir_for): under DATA_DIR, a folder
    `allowed_folder` refuses whatever CUSTOM_MODEL_ROOTS says, so no organisation registers another's
    training data or adapter as its own."""
    return Path(settings.DATA_DIR) / "tuning-jobs"


def own_run_folder(organization: Organization, folder: Path) -> bool:
    """Whether `folder` lies in one of the organisation's own tuning runs (`<organization id>-<job id>`)."""
    runs = tuning_runs_root().resolve()
    folder = folder.resolve()
    if runs not in folder.parents:
        return False
    run = folder.relative_to(runs).parts[0]
    return run.startswith(f"{organization.pk}-")


def store_copy_folder(card: ModelCard) -> Path:
    """Where this machine keeps the copy of a store-registered model's weights: under DATA_DIR, a folder
    `allowed_folder` refuses whatever CUSTOM_MODEL_ROOTS says, so no organisation can register another's
    copy as a folder of its own."""
    return store_copies_root() / card.slug


COPY_MANIFEST = ".copied.json"
COPY_LOCK = ".copying.lock"


class CopyInProgress(Exception):
    """Another worker is copying the same model's weights right now; it applies its deployment when done."""


def copy_store_weights(custom: CustomModel, progress: Callable[[int, int], None]) -> Path:
    """Bring this machine's copy of the model's weights up to date with its store folder and return it.

    1. Take the copy's lock, or raise CopyInProgress at once: one copy of a model at a time, whichever
       task or deployment asks.
    2. List the folder; each file (SKIPPED_SUFFIXES aside) whose copy has another size or ETag, or none,
       is downloaded (through a temporary file renamed into place), and the manifest records its ETag;
       files gone from the folder, and parts a crash left, are removed. Refused before anything is
       fetched when the disk cannot hold what is to come.
    3. `progress(done, total)` hears the bytes, so the deployment's page shows the copy advancing.
    Running it again (a retry, a second deployment of the model) copies only what changed; a crash leaves
    whole files and a manifest of those only. Raises StoreAccessError, CopyInProgress, OSError.
    """
    folder = store_folder(custom)
    target = store_copy_folder(custom.card)
    target.mkdir(parents=True, exist_ok=True)
    with (target / COPY_LOCK).open("a") as lock_file:
        try:
            fcntl.flock(lock_file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise CopyInProgress(f"{custom.name}'s weights are being copied by another task.") from None
        return _copy(folder, target, progress)


def _copy(folder: StoreFolder, target: Path, progress: Callable[[int, int], None]) -> Path:
    manifest_path = target / COPY_MANIFEST
    try:
        manifest: dict[str, str] = json.loads(manifest_path.read_text())
    except (OSError, ValueError):
        manifest = {}
    wanted = {name: file for name, file in sorted(folder.files().items()) if copied_file(name)}
    for path in target.iterdir():  # gone from the folder, or a part a crash left: not the model's any more
        if path.is_file() and path.name not in wanted and path.name not in (COPY_MANIFEST, COPY_LOCK):
            path.unlink(missing_ok=True)
            manifest.pop(path.name, None)
    stale = [
        file
        for file in wanted.values()
        if manifest.get(file.name) != file.etag
        or not (target / file.name).is_file()
        or (target / file.name).stat().st_size != file.size
    ]
    total = sum(file.size for file in stale)
    free = shutil.disk_usage(target).free
    if total > free:
        raise OSError(
            errno.ENOSPC,
            f"the copy needs {total / 1e9:.1f} GB and the disk under DATA_DIR has {free / 1e9:.1f} GB free",
        )
    done = 0
    lock = threading.Lock()  # the transfer's threads report their parts at once
    progress(done, total)
    for file in stale:

        def heard(amount: int) -> None:
            nonlocal done
            with lock:
                done += amount
                progress(done, total)

        folder.download(file.name, target / file.name, heard)
        manifest[file.name] = file.etag
        write_atomically(manifest_path, json.dumps(manifest, sort_keys=True).encode())
    return target


def write_atomically(path: Path, data: bytes) -> None:
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=".part-")
    with os.fdopen(handle, "wb") as output:
        output.write(data)
    os.replace(temporary, path)


def delete_store_copy(card: ModelCard) -> None:
    """Remove this machine's copy of a deleted model's weights (none is not an error)."""
    shutil.rmtree(store_copy_folder(card), ignore_errors=True)


# Where registered adapters' archives are kept in the platform's object store (learning.storage.get_store).
ADAPTER_ARCHIVES = "adapters"


def _plain_member(member: tarfile.TarInfo) -> tarfile.TarInfo:
    """An archived file as nobody's: no owner names or ids of this machine, readable by all."""
    member.uid = member.gid = 0
    member.uname = member.gname = ""
    member.mode = 0o644
    return member


def adapter_archive(folder: Path, field: str = "path") -> bytes:
    """An adapter folder's files as a gzipped tar: the top level only (PEFT writes nothing deeper), no
    hidden files and no pickled weights (read_adapter insists on safetensors). A file that is a link (a
    Hugging Face cache snapshot's are) goes in as the file it leads to, which must lie in the folders custom
    models are registered from (allowed_folder, naming `field`)."""
    buffer = io.BytesIO()
    # Safetensors hardly compress: the quickest level costs least.
    with tarfile.open(fileobj=buffer, mode="w:gz", compresslevel=1) as archive:
        for path in sorted(folder.iterdir()):
            if not copied_file(path.name) or not path.is_file():
                continue
            real = path.resolve()
            if path.is_symlink():
                allowed_folder(str(real.parent), field)
            archive.add(real, arcname=path.name, recursive=False, filter=_plain_member)
    return buffer.getvalue()


class FilesNotKept(exceptions.ValidationError):
    """The platform's object store did not take an adapter's archive: worth trying again."""


def keep_adapter_files(organization: Organization, name: str, folder: Path, field: str = "path") -> str:
    """Put the adapter's archive in the platform's object store under a key of its own; the key."""
    key = f"{ADAPTER_ARCHIVES}/{organization.pk}/{name}-{uuid.uuid4().hex[:12]}.tar.gz"
    data = adapter_archive(folder, field)
    try:
        get_store().put(key, data)
    except Exception as error:  # the store's own errors (boto3's, a full disk): refused, not a 500
        # The error may name the store's hosts and paths, which are the platform's business: logged only.
        log.warning("keeping the adapter archive %s failed: %s", key, error)
        message = (
            "The adapter's files could not be kept in the platform's object store: try again shortly; if "
            "it keeps failing, a platform admin can read why in the platform's log."
        )
        raise FilesNotKept({field: [message]}) from None
    return key


def forget_adapter_files(key: str) -> None:
    """Delete an adapter's archive, as a clean-up: a failure is logged, not raised (an archive left behind
    costs a little storage, never a wrong answer)."""
    if not key:
        return
    try:
        get_store().delete(key)
    except ObjectNotFound:
        pass
    except Exception as error:
        log.warning("the adapter archive %s stays in the object store: %s", key, type(error).__name__)


def ensure_adapter_files(custom: CustomModel, field: str = "model") -> str:
    """The key of the adapter's archive in the platform's object store, kept now from its folder when it
    was registered before adapters were kept there; refused, naming `field`, when that folder is gone."""
    if custom.archive_key:
        return custom.archive_key
    folder = Path(custom.path)
    if not own_run_folder(custom.organization, folder):
        folder = allowed_folder(custom.path, field)  # still where the organisation may read from
    if not (folder / "adapter_config.json").is_file():
        raise _refuse(
            field,
            f"{custom.name}'s files are neither in the platform's object store nor in {custom.path}: "
            "register the adapter again.",
        )
    key = keep_adapter_files(custom.organization, custom.name, folder, field)
    if CustomModel.objects.filter(pk=custom.pk, archive_key="").update(archive_key=key) == 0:
        forget_adapter_files(key)  # kept by someone else meanwhile (theirs stays), or deleted
        kept = CustomModel.objects.filter(pk=custom.pk).values_list("archive_key", flat=True).first()
        if not kept:
            raise _refuse(field, f"{custom.name} no longer exists.")
        custom.archive_key = kept
        return kept
    custom.archive_key = key
    return key


def _base_names(base: ModelCard) -> set[str]:
    """What an adapter's base_model_name_or_path may say for `base`: its repository, or its folder."""
    names = {base.huggingface_repo.lower()} if base.huggingface_repo else set()
    custom = getattr(base, "custom_model", None) if base.organization_id else None
    if custom is not None and custom.path:
        names.add(str(Path(custom.path).resolve()).lower())
    if custom is not None and custom.source == CustomModelSource.STORE:  # trained on this machine's copy
        names.add(str(store_copy_folder(base).resolve()).lower())
    return names


def _hidden_size(base: ModelCard) -> int | None:
    """The base's hidden size where its registration read it (custom models); catalog cards do not
    store it."""
    custom = getattr(base, "custom_model", None) if base.organization_id else None
    value = custom.facts.get("hidden_size") if custom is not None else None
    return value if isinstance(value, int) else None


def register_adapter(
    *,
    organization: Organization,
    user: User | None,
    name: str,
    path: str,
    base: ModelCard,
    summary: str = "",
    run_folder: bool = False,
    archive_key: str = "",
) -> CustomModel:
    """A LoRA adapter served on a deployment of `base` (a card the organisation can see). `run_folder`: the
    path is one of the organisation's own tuning runs (which allowed_folder refuses to everyone else);
    `archive_key`: its archive, kept already by the caller (keep_adapter_files), else kept here."""
    check_name(organization, name)
    if base.organization_id not in (None, organization.pk):
        raise _refuse("base", "No model with that slug.")  # another organisation's: as if absent
    if base.organization_id and base.custom_model.source == CustomModelSource.ADAPTER:
        raise _refuse("base", f"{base.name} is itself an adapter: choose the model it adapts.")
    if not base.servable or "completions" not in base.routes:
        raise _refuse("base", f"{base.name} is not a text generation model the engine serves with adapters.")
    if run_folder and own_run_folder(organization, Path(path)):
        folder = Path(path).resolve()
    else:
        folder = allowed_folder(path)
    try:
        adapter = weights.read_adapter(folder)
    except weights.WeightsError as error:
        raise _refuse("path", error.message) from None
    stated = adapter.base_model.rstrip("/").lower()
    if stated not in _base_names(base) and str(Path(adapter.base_model).resolve()).lower() not in _base_names(
        base
    ):
        raise _refuse(
            "base",
            f"The adapter was trained on {adapter.base_model} (adapter_config.json's "
            f"base_model_name_or_path), not on {base.name} ({base.huggingface_repo}): "
            "choose that base model.",
        )
    hidden = _hidden_size(base)
    if hidden and adapter.input_widths and adapter.input_widths != {hidden}:
        raise _refuse(
            "base",
            f"The adapter's layers read a hidden state of width "
            f"{', '.join(map(str, sorted(adapter.input_widths)))}; {base.name}'s is {hidden}: "
            "it was trained on another model.",
        )
    base_fields = {
        key: getattr(base, key)
        for key in (
            "tasks", "modalities_in", "modalities_out", "languages", "domains", "context_length", "dtype",
            "num_hidden_layers", "num_key_value_heads", "head_dim", "kv_latent_dim", "cpu_capable",
            "huggingface_repo", "revision", "engine_defaults",
        )
    }  # fmt: skip
    facts = fits.ModelFacts(
        parameters=base.parameters + adapter.parameters,
        serving_dtype=base.engine_defaults.get("dtype") or "auto",
        context_length=base.context_length,
        default_max_model_len=base.engine_defaults.get("max_model_len"),
        layers=base.num_hidden_layers,
        kv_heads=base.num_key_value_heads,
        head_dim=base.head_dim,
        latent_dim=base.kv_latent_dim,
        cpu_capable=base.cpu_capable,
    )
    archive_key = archive_key or keep_adapter_files(organization, name, folder)
    try:
        return _save(
            organization=organization,
            user=user,
            name=name,
            card_fields={
                **base_fields,
                "summary": summary,
                "base_model": base.slug,
                "parameters": facts.parameters,
                **_memory(facts),
            },
            custom_fields={
                "source": CustomModelSource.ADAPTER,
                "path": str(folder),
                "archive_key": archive_key,
                "base": base,
                "lora_rank": adapter.rank,
                "target_modules": list(adapter.target_modules),
                "architecture": getattr(getattr(base, "custom_model", None), "architecture", "") or "",
                "facts": {
                    "base_model_name_or_path": adapter.base_model,
                    "r": adapter.rank,
                    "lora_alpha": adapter.alpha,
                    "target_modules": list(adapter.target_modules),
                    "adapter_parameters": adapter.parameters,
                },
            },
        )
    except BaseException:
        forget_adapter_files(archive_key)
        raise


def delete_custom_model(custom: CustomModel) -> None:
    """Delete the custom model, its card and its subscription; refused while a deployment (not yet
    deleted) runs it or an adapter is registered on it."""
    from marketplace.subscriptions.models import Subscription
    from serving.choices import DeploymentStatus
    from serving.models import Deployment

    with transaction.atomic():
        card = ModelCard.every_card.select_for_update().get(pk=custom.card_id)
        names = list(
            Deployment.objects.filter(Q(model_card=card) | Q(adapters__model_card=card))
            .exclude(status=DeploymentStatus.DELETED)
            .order_by("name")
            .values_list("name", flat=True)
            .distinct()
        )
        if names:
            raise Conflict(
                {"name": [f"{custom.name} still runs in deployment{'s' if len(names) > 1 else ''} "
                          f"{', '.join(names)}: delete {'them' if len(names) > 1 else 'it'} first."]}
            )  # fmt: skip
        adapters = list(CustomModel.objects.filter(base=card).values_list("name", flat=True))
        if adapters:
            raise Conflict(
                {
                    "name": [
                        f"Adapters are registered on {custom.name} ({', '.join(adapters)}): "
                        "delete them first."
                    ]
                }
            )
        Subscription.objects.filter(model_card=card).delete()
        if custom.source == CustomModelSource.STORE:
            transaction.on_commit(lambda: delete_store_copy(card))
        # From the row as it is now: an archive made since `custom` was read goes too.
        archive_key = CustomModel.objects.filter(pk=custom.pk).values_list("archive_key", flat=True).first()
        transaction.on_commit(lambda: forget_adapter_files(archive_key or ""))
        custom.delete()
        if Deployment.objects.filter(model_card=card).exists():
            # Deleted deployments keep their history and usage, which refer to the card: the card stays,
            # unlisted (no custom model shows it), under a slug that frees the name for a new registration.
            ModelCard.every_card.filter(pk=card.pk).update(slug=f"custom-{card.organization_id}-x{card.pk}")
        else:
            card.delete()
