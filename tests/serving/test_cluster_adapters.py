"""LoRA adapters on a cluster: kept in the platform's object store when registered, fetched by each engine
pod's init container from presigned URLs before the engine starts, the URLs renewed by the reconciler long
before they expire; and the refusals of what a cluster's engines cannot read.

The store is moto's S3 server (real HTTP, real presigned URLs); the cluster is the stateful fake API
server; the init container's program runs for real here, with this machine's python3 (the engine image's
is the same standard library)."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import tarfile
from pathlib import Path
from typing import Any

import pytest
from django.test import Client
from django.utils import timezone

from learning.storage import S3Store, get_store, presigned_url
from marketplace.catalog.models import CustomModel, ModelCard
from marketplace.subscriptions.services import subscribe
from serving import manifests, services, tasks
from serving.backends.kubernetes import KubernetesBackend
from serving.models import Deployment
from serving.spec import ClusterSettings
from tests.catalog.custom_model_files import write_adapter, write_model
from tests.engines import free_port
from tests.serving.conftest import backend_for
from tests.serving.fake_kubernetes import NAMESPACE, FakeKubernetes
from tests.serving.test_manifests import secret_values

pytestmark = pytest.mark.django_db

CUSTOM, DEPLOYMENTS = "/api/custom-models/", "/api/deployments/"
SMOL = "smollm2-135m-instruct"
GPU = "aws-g5-xlarge"
ADAPTER_FILES = ["adapter_config.json", "adapter_model.safetensors"]


@pytest.fixture
def root(
    settings: Any,
    monkeypatch: Any,
    tmp_path: Path,
    kubernetes_backend: KubernetesBackend,
    s3_settings: S3Store,
) -> Path:
    """A platform on a cluster (the fake) whose object store is a bucket; folders custom models are
    registered from."""
    settings.SERVING_BACKEND = "kubernetes"
    settings.CUSTOM_MODEL_ROOTS = [str(tmp_path / "models")]
    monkeypatch.setattr(tasks, "get_backend", lambda name=None: kubernetes_backend)
    monkeypatch.setattr(services, "_enqueue", lambda task, deployment_id: None)
    (tmp_path / "models").mkdir()
    return tmp_path / "models"


def register(client: Any, root: Path, name: str) -> dict[str, Any]:
    """An adapter on SmolLM2, its folder holding a hidden file and pickled optimizer state beside it."""
    smol = ModelCard.objects.get(slug=SMOL)
    folder = write_adapter(root / name, smol.huggingface_repo, width=576)
    (folder / ".notes").write_text("not the adapter's")
    (folder / "optimizer.pt").write_bytes(b"pickled, never served")
    body = {"name": name, "source": "adapter", "path": str(folder), "base": SMOL}
    answer = client.post(CUSTOM, body, format="json")
    assert answer.status_code == 201, answer.content
    return dict(answer.json())


def deploy(client: Any, model: str, adapters: list[dict[str, str]] | None = None) -> Any:
    body = {"name": "mine", "model": model, "instance_type": GPU, "adapters": adapters or []}
    return client.post(DEPLOYMENTS, body, format="json")


def archive_members(store: S3Store, key: str) -> dict[str, bytes]:
    with tarfile.open(fileobj=io.BytesIO(store.get(key)), mode="r:gz") as archive:
        members = archive.getmembers()
        assert all((m.uid, m.gid, m.uname, m.gname, m.mode) == (0, 0, "", "", 0o644) for m in members)
        return {m.name: archive.extractfile(m).read() for m in members}  # type: ignore[union-attr]


def fetch(target: Path, environment: dict[str, str], count: int) -> subprocess.CompletedProcess[str]:
    """The init container's program, as its manifest says to run it, into `target`."""
    command = [sys.executable, "-c", manifests.FETCH_ADAPTERS, str(target), *map(str, range(count))]
    return subprocess.run(
        command, env={"PATH": os.environ["PATH"], **environment}, capture_output=True, text=True, timeout=60
    )


def test_registering_an_adapter_keeps_its_files_in_the_platforms_object_store_until_it_is_deleted(
    root, client_for, owner, s3_settings, django_capture_on_commit_callbacks
) -> None:
    client = client_for(owner)
    adapter = register(client, root, "support")
    custom = CustomModel.objects.get(card__slug=adapter["slug"])
    assert custom.archive_key.startswith(f"adapters/{custom.organization_id}/support-")
    kept = archive_members(s3_settings, custom.archive_key)
    assert sorted(kept) == ADAPTER_FILES  # no hidden file, no pickled state
    assert all(kept[name] == (root / "support" / name).read_bytes() for name in ADAPTER_FILES)

    with django_capture_on_commit_callbacks(execute=True):
        assert client.delete(f"{CUSTOM}{adapter['id']}/").status_code == 204
    assert s3_settings.list("adapters/") == []


def test_a_cluster_deployment_fetches_its_adapters_into_the_pod_before_the_engine_starts(
    root, client_for, owner, acme, s3_settings, fake_kubernetes: FakeKubernetes, tmp_path
) -> None:
    client = client_for(owner)
    subscribe(organization=acme, card=ModelCard.objects.get(slug=SMOL), license_sha256=None, user=owner)
    support, legal = register(client, root, "support"), register(client, root, "legal")
    answer = deploy(client, support["slug"], [{"name": "legal", "model": legal["slug"]}])
    assert answer.status_code == 201, answer.content
    row = Deployment.objects.get(pk=answer.json()["id"])
    assert tasks.provision_deployment.apply(args=[row.pk]).get() == "applied"

    spec = services.spec_for(row)
    name = manifests.object_name(spec)
    pod = fake_kubernetes.get("apps/v1", "deployments", name)["spec"]["template"]["spec"]  # type: ignore[index]
    assert [c["name"] for c in pod["initContainers"]] == [manifests.FETCH_CONTAINER]
    applied = fake_kubernetes.get("apps/v1", "deployments", name)
    assert "X-Amz-Signature" not in json.dumps(applied)  # the URLs are in the Secret only
    args = pod["containers"][0]["args"]
    assert args[args.index("--lora-modules") + 1 :][:2] == ["mine=/adapters/0", "mine:legal=/adapters/1"]
    secret = fake_kubernetes.get("v1", "secrets", manifests.weights_secret_name(spec))
    assert secret is not None
    urls = secret_values(secret)
    assert sorted(urls) == ["ADAPTER_0_URL", "ADAPTER_1_URL"]
    row.refresh_from_db()
    assert row.adapter_urls_signed_at is not None

    # What the init container does with those URLs, for real: each adapter whole in its own folder.
    pod_folder = tmp_path / "pod-adapters"
    pod_folder.mkdir()
    done = fetch(pod_folder, urls, 2)
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == ["adapter 0: fetched", "adapter 1: fetched"]
    for index, adapter in ((0, "support"), (1, "legal")):
        assert sorted(p.name for p in (pod_folder / str(index)).iterdir()) == ADAPTER_FILES
        for file in ADAPTER_FILES:
            assert (pod_folder / str(index) / file).read_bytes() == (root / adapter / file).read_bytes()
    # A restart of the init container (the pod's emptyDir kept) fetches nothing twice.
    again = fetch(pod_folder, urls, 2)
    assert (again.returncode, again.stdout) == (0, "")


def test_the_fetch_refuses_an_archive_that_leads_out_of_its_folder_and_never_prints_the_url(
    s3_settings, tmp_path
) -> None:
    crafted = io.BytesIO()
    with tarfile.open(fileobj=crafted, mode="w:gz") as archive:
        payload = b"written outside"
        member = tarfile.TarInfo("../escaped.txt")
        member.size = len(payload)
        archive.addfile(member, io.BytesIO(payload))
    s3_settings.put("adapters/1/crafted.tar.gz", crafted.getvalue())
    url = presigned_url(s3_settings, "adapters/1/crafted.tar.gz", write=False, expires_seconds=600)
    pod_folder = tmp_path / "adapters"
    pod_folder.mkdir()
    refused = fetch(pod_folder, {"ADAPTER_0_URL": url}, 1)
    assert refused.returncode == 1
    assert refused.stderr.startswith("adapter 0: OutsideDestinationError")
    assert "X-Amz-Signature" not in refused.stderr + refused.stdout
    assert not (tmp_path / "escaped.txt").exists() and not (pod_folder / "0").exists()

    missing = fetch(pod_folder, {"ADAPTER_0_URL": url.replace("crafted", "gone")}, 1)
    assert missing.returncode == 1 and missing.stderr.startswith("adapter 0: HTTPError: HTTP Error 404")


def test_the_reconciler_renews_adapter_urls_a_day_old_once_and_leaves_fresh_ones(
    root, client_for, owner, acme, monkeypatch
) -> None:
    client = client_for(owner)
    support = register(client, root, "support")
    answer = deploy(client, support["slug"])
    assert answer.status_code == 201, answer.content
    row_id = answer.json()["id"]
    tasks.provision_deployment.apply(args=[row_id]).get()
    enqueued: list[int] = []
    monkeypatch.setattr(tasks.provision_deployment, "delay", enqueued.append)

    assert tasks.reconcile_once()["renewed"] == 0  # signed just now
    old = timezone.now() - timezone.timedelta(seconds=services.ADAPTER_URL_RENEW_SECONDS + 60)
    Deployment.objects.filter(pk=row_id).update(adapter_urls_signed_at=old)
    assert tasks.reconcile_once()["renewed"] == 1
    assert tasks.reconcile_once()["renewed"] == 0  # claimed: enqueued once
    assert enqueued == [row_id]
    assert Deployment.objects.get(pk=row_id).adapter_urls_signed_at > old  # type: ignore[operator]


def test_a_folder_model_deploys_on_a_cluster_only_from_a_volume_its_engines_mount(
    root, client_for, owner, settings, monkeypatch, fake_kubernetes: FakeKubernetes
) -> None:
    client = client_for(owner)
    folder = write_model(root / "lab" / "tiny")
    registered = client.post(CUSTOM, {"name": "tiny", "source": "path", "path": str(folder)}, format="json")
    assert registered.status_code == 201, registered.content
    refused = deploy(client, registered.json()["slug"])
    assert refused.status_code == 400
    assert "a folder in none of the volumes a cluster's engines mount" in refused.json()["model"][0]
    assert not Deployment.objects.exists()

    settings.CUSTOM_MODEL_VOLUMES = {str(root / "lab"): "lab-models"}  # a platform admin makes it a volume
    cluster = ClusterSettings(namespace=NAMESPACE, model_volumes=tuple(settings.CUSTOM_MODEL_VOLUMES.items()))
    monkeypatch.setattr(tasks, "get_backend", lambda name=None: backend_for(fake_kubernetes.url, cluster))
    created = deploy(client, registered.json()["slug"])
    assert created.status_code == 201, created.content
    row = Deployment.objects.get(pk=created.json()["id"])
    assert tasks.provision_deployment.apply(args=[row.pk]).get() == "applied"
    applied = fake_kubernetes.get("apps/v1", "deployments", manifests.object_name(services.spec_for(row)))
    pod = applied["spec"]["template"]["spec"]  # type: ignore[index]
    assert {
        "name": "custom-model",
        "persistentVolumeClaim": {"claimName": "lab-models", "readOnly": True},
    } in (pod["volumes"])
    assert pod["containers"][0]["args"][0] == str(folder)


def test_adapters_on_a_cluster_need_the_platforms_object_store_to_be_a_bucket(
    root, client_for, owner, settings, tmp_path
) -> None:
    settings.OBJECT_STORE_BUCKET = ""
    settings.DATA_DIR = str(tmp_path / "data")
    get_store.cache_clear()
    client = client_for(owner)
    adapter = register(client, root, "support")  # kept in the folder store: registering works
    refused = deploy(client, adapter["slug"])
    assert refused.status_code == 400
    assert "OBJECT_STORE_BUCKET" in refused.json()["model"][0]
    get_store.cache_clear()


def test_an_adapter_registered_before_archives_is_kept_when_first_deployed_on_a_cluster(
    root, client_for, owner, acme, s3_settings
) -> None:
    client = client_for(owner)
    subscribe(organization=acme, card=ModelCard.objects.get(slug=SMOL), license_sha256=None, user=owner)
    older = register(client, root, "older")
    custom = CustomModel.objects.get(card__slug=older["slug"])
    s3_settings.delete(custom.archive_key)
    CustomModel.objects.filter(pk=custom.pk).update(archive_key="")

    answer = deploy(client, SMOL, [{"name": "older", "model": older["slug"]}])
    assert answer.status_code == 201, answer.content
    custom.refresh_from_db()
    assert sorted(archive_members(s3_settings, custom.archive_key)) == ADAPTER_FILES

    # Gone from the store and from its folder: said, naming the field that chose it.
    s3_settings.delete(custom.archive_key)
    CustomModel.objects.filter(pk=custom.pk).update(archive_key="")
    for file in (root / "older").iterdir():
        file.unlink()
    body = {"adapters": [{"name": "older", "model": older["slug"]}], "engine_options": {"max_num_seqs": 8}}
    refused = client.patch(f"{DEPLOYMENTS}{answer.json()['id']}/", body, format="json")
    assert refused.status_code == 400
    assert "register the adapter again" in refused.json()["adapters"][0]


def test_an_adapter_fetch_that_keeps_failing_fails_the_deployment_in_words(
    root, client_for, owner, fake_kubernetes: FakeKubernetes
) -> None:
    client = client_for(owner)
    answer = deploy(client, register(client, root, "support")["slug"])
    row = Deployment.objects.get(pk=answer.json()["id"])
    tasks.provision_deployment.apply(args=[row.pk]).get()
    spec = services.spec_for(row)
    name = manifests.object_name(spec)
    fake_kubernetes.set_deployment_status(name, replicas=1, ready_replicas=0)
    crashing = {
        "name": manifests.FETCH_CONTAINER, "ready": False, "restartCount": 4,
        "state": {"waiting": {"reason": "CrashLoopBackOff"}},
        "lastState": {"terminated": {"reason": "Error", "exitCode": 1}},
    }  # fmt: skip
    waiting = {
        "name": "vllm",
        "ready": False,
        "restartCount": 0,
        "state": {"waiting": {"reason": "PodInitializing"}},
    }
    fake_kubernetes.add_pod(
        f"{name}-abc-1", manifests.labels(spec), phase="Pending", ready=False,
        init_container_statuses=[crashing], container_statuses=[waiting],
    )  # fmt: skip
    tasks.reconcile_once()
    row.refresh_from_db()
    assert row.status == "failed"
    assert row.status_message.startswith(
        "The deployment's LoRA adapters could not be fetched from the platform's object store after 4 "
        "attempts"
    )


def test_the_shown_manifests_and_page_fetch_the_adapters_but_sign_nothing(
    root, client_for, owner, member, outsider, settings
) -> None:
    client = client_for(owner)
    answer = deploy(client, register(client, root, "support")["slug"])
    deployment_id = answer.json()["id"]
    settings.OBJECT_STORE_BUCKET = ""  # a store that can sign nothing: showing needs no signature
    get_store.cache_clear()
    shown = client_for(member).get(f"{DEPLOYMENTS}{deployment_id}/manifests/")
    assert shown.status_code == 200, shown.content
    text = shown.content.decode()
    assert manifests.FETCH_CONTAINER in text and "mine=/adapters/0" in text
    assert "ADAPTER_0_URL: <a credential, applied to the cluster and never shown>" in text
    assert "X-Amz" not in text
    shown_spec = services.spec_for(Deployment.objects.get(pk=deployment_id), sign=False)
    assert shown_spec.model.adapter_url == services.UNSIGNED_URL  # built to be shown: nothing signed
    page = Client()
    page.force_login(member)
    assert page.get(f"/deployments/{deployment_id}/").status_code == 200
    assert client_for(outsider).get(f"{DEPLOYMENTS}{deployment_id}/manifests/").status_code == 404
    get_store.cache_clear()


def test_a_store_that_fails_refuses_the_registration_naming_path_and_keeps_nothing(
    root, client_for, owner, settings
) -> None:
    settings.OBJECT_STORE_ENDPOINT_URL = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    get_store.cache_clear()
    smol = ModelCard.objects.get(slug=SMOL)
    folder = write_adapter(root / "support", smol.huggingface_repo, width=576)
    body = {"name": "support", "source": "adapter", "path": str(folder), "base": SMOL}
    answer = client_for(owner).post(CUSTOM, body, format="json")
    assert answer.status_code == 400
    assert "could not be kept in the platform's object store" in answer.json()["path"][0]
    assert "127.0.0.1" not in answer.content.decode()  # the store's address is the platform's business
    assert not CustomModel.objects.exists()
    get_store.cache_clear()


def test_an_adapter_of_links_is_archived_as_the_files_they_lead_to_inside_the_roots_only(
    root, client_for, owner, s3_settings, tmp_path
) -> None:
    client = client_for(owner)
    smol = ModelCard.objects.get(slug=SMOL)
    blobs = write_adapter(root / "blobs", smol.huggingface_repo, width=576)  # a Hub cache's blobs, say
    snapshot = root / "snapshot"
    snapshot.mkdir()
    for name in ADAPTER_FILES:
        (snapshot / name).symlink_to(blobs / name)
    body = {"name": "linked", "source": "adapter", "path": str(snapshot), "base": SMOL}
    answer = client.post(CUSTOM, body, format="json")
    assert answer.status_code == 201, answer.content
    key = CustomModel.objects.get(card__slug=answer.json()["slug"]).archive_key
    kept = archive_members(s3_settings, key)
    assert all(kept[name] == (blobs / name).read_bytes() for name in ADAPTER_FILES)

    outside = write_adapter(tmp_path / "elsewhere", smol.huggingface_repo, width=576)
    leading_out = root / "leading-out"
    leading_out.mkdir()
    (leading_out / "adapter_config.json").write_bytes((outside / "adapter_config.json").read_bytes())
    (leading_out / "adapter_model.safetensors").symlink_to(outside / "adapter_model.safetensors")
    body = {"name": "leading-out", "source": "adapter", "path": str(leading_out), "base": SMOL}
    refused = client.post(CUSTOM, body, format="json")
    assert refused.status_code == 400
    assert "is outside the folders custom models are registered from" in refused.json()["path"][0]


def test_dropping_the_adapters_takes_their_urls_off_the_cluster(
    root, client_for, owner, acme, fake_kubernetes: FakeKubernetes
) -> None:
    client = client_for(owner)
    subscribe(organization=acme, card=ModelCard.objects.get(slug=SMOL), license_sha256=None, user=owner)
    legal = register(client, root, "legal")
    created = deploy(client, SMOL, [{"name": "legal", "model": legal["slug"]}])
    row = Deployment.objects.get(pk=created.json()["id"])
    tasks.provision_deployment.apply(args=[row.pk]).get()
    name = manifests.weights_secret_name(services.spec_for(row))
    assert fake_kubernetes.get("v1", "secrets", name) is not None
    dropped = client.patch(f"{DEPLOYMENTS}{row.pk}/", {"adapters": []}, format="json")
    assert dropped.status_code == 200, dropped.content
    tasks.provision_deployment.apply(args=[row.pk]).get()
    assert fake_kubernetes.get("v1", "secrets", name) is None
    row.refresh_from_db()
    assert row.adapter_urls_signed_at is None  # nothing left to renew


def test_an_older_adapter_is_archived_when_its_deployment_is_applied_again(
    root, client_for, owner, s3_settings
) -> None:
    client = client_for(owner)
    adapter = register(client, root, "older")
    answer = deploy(client, adapter["slug"])
    custom = CustomModel.objects.get(card__slug=adapter["slug"])
    s3_settings.delete(custom.archive_key)
    CustomModel.objects.filter(pk=custom.pk).update(archive_key="")  # as registered before archives
    assert tasks.provision_deployment.apply(args=[answer.json()["id"]]).get() == "applied"
    custom.refresh_from_db()
    assert sorted(archive_members(s3_settings, custom.archive_key)) == ADAPTER_FILES


def test_the_manifests_of_a_folder_model_outside_every_volume_are_refused_not_a_500(
    root, client_for, owner, settings
) -> None:
    client = client_for(owner)
    folder = write_model(root / "lab" / "tiny")
    registered = client.post(CUSTOM, {"name": "tiny", "source": "path", "path": str(folder)}, format="json")
    settings.CUSTOM_MODEL_VOLUMES = {str(root / "lab"): "lab-models"}
    created = deploy(client, registered.json()["slug"])
    assert created.status_code == 201, created.content
    settings.CUSTOM_MODEL_VOLUMES = {}  # a platform admin takes the volume away since
    shown = client.get(f"{DEPLOYMENTS}{created.json()['id']}/manifests/")
    assert shown.status_code == 409
    assert "lies in none of the volumes" in shown.json()["deployment"][0]
