"""Custom models registered from an S3-compatible object store (moto's S3 server over HTTP, a real
S3 wire protocol): the card filled from config.json and the safetensors headers read with ranged GETs,
the key kept encrypted and never shown, the refusals naming their field, the copy this machine's engines
load, the objects a cluster's engines stream with, and no other organisation ever seeing any of it."""

from __future__ import annotations

import json
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from botocore.exceptions import ClientError

from learning.storage import StoreAccessError, StoreFolder, s3_client
from marketplace.catalog import custom_models
from marketplace.catalog.models import CustomModel, InstanceType, ModelCard
from serving import manifests, services, tasks
from serving.backends.base import PermanentBackendError, TransientBackendError
from serving.models import Deployment
from tests.catalog.custom_model_files import (
    TINY_LLAMA_CONFIG,
    TINY_LLAMA_TENSORS,
    parameter_count,
    safetensors_bytes,
    write_model,
)
from tests.serving.test_manifests import secret_values

CUSTOM = "/api/custom-models/"
KEY_ID, SECRET = "AKIDTINYLLAMA", "tiny-llama-secret-0123456789"


@pytest.fixture
def bucket(s3_server: str, settings: Any) -> Iterator[Any]:
    """A fresh bucket on the S3 server, which the settings allow custom models from."""
    settings.CUSTOM_MODEL_STORE_ENDPOINTS = [s3_server]
    client = s3_client(s3_server, "us-east-1", KEY_ID, SECRET)
    name = f"weights-{uuid.uuid4().hex[:8]}"
    client.create_bucket(Bucket=name)
    client.name = name
    try:
        yield client
    finally:
        for item in client.list_objects_v2(Bucket=name).get("Contents", ()):
            client.delete_object(Bucket=name, Key=item["Key"])
        client.delete_bucket(Bucket=name)


def upload(client: Any, folder: Path, prefix: str) -> str:
    for path in sorted(folder.iterdir()):
        client.upload_file(str(path), client.name, f"{prefix}/{path.name}")
    return f"s3://{client.name}/{prefix}"


@pytest.fixture
def uri(bucket: Any, tmp_path: Path) -> str:
    folder = write_model(tmp_path / "tiny-llama")
    (folder / "pytorch_model.bin").write_bytes(b"pickled weights the engine never needs")
    return upload(bucket, folder, "models/tiny-llama")


def register(client: Any, s3_server: str, **body: Any) -> Any:
    fields = {
        "name": "tiny",
        "source": "store",
        "endpoint_url": s3_server,
        "access_key_id": KEY_ID,
        "secret_access_key": SECRET,
        **body,
    }
    return client.post(CUSTOM, fields, format="json")


@pytest.fixture
def registered(client_for: Any, owner: Any, uri: str, s3_server: str) -> dict[str, Any]:
    response = register(client_for(owner), s3_server, uri=uri)
    assert response.status_code == 201, response.content
    return response.json()


def test_the_card_says_what_the_stored_files_say(
    registered: dict[str, Any], uri: str, s3_server: str
) -> None:
    assert registered["source"] == "store"
    assert registered["uri"] == f"{uri}/"
    assert (registered["endpoint_url"], registered["access_key_id"]) == (s3_server, KEY_ID)
    assert registered["architecture"] == "LlamaForCausalLM"
    assert registered["parameters"] == parameter_count(TINY_LLAMA_TENSORS)
    assert registered["context_length"] == TINY_LLAMA_CONFIG["max_position_embeddings"]
    assert registered["dtype"] == "bfloat16" and registered["tasks"] == ["chat"]
    assert registered["facts"]["num_key_value_heads"] == 2 and registered["facts"]["head_dim"] == 16
    # What this machine copies: the safetensors and configs, not the pickled weights beside them.
    assert sorted(registered["facts"]["files"]) == [
        "config.json",
        "model.safetensors",
        "tokenizer_config.json",
    ]


def test_only_the_safetensors_headers_are_read_never_the_weights(
    client_for: Any, owner: Any, bucket: Any, tmp_path: Path, s3_server: str, monkeypatch: Any
) -> None:
    big = {**TINY_LLAMA_TENSORS, "model.layers.1.mlp.up_proj.weight": ("F32", [128, 4096])}  # 2 MiB of data
    folder = write_model(tmp_path / "bigger", tensors=big)
    uri = upload(bucket, folder, "bigger")
    reads: list[tuple[str, int, int]] = []
    real_read = StoreFolder.read

    def counted(self: StoreFolder, name: str, start: int = 0, length: int | None = None) -> bytes:
        data = real_read(self, name, start, length)
        reads.append((name, start, len(data)))
        return data

    monkeypatch.setattr(StoreFolder, "read", counted)
    response = register(client_for(owner), s3_server, uri=uri)
    assert response.status_code == 201, response.content
    assert response.json()["parameters"] == parameter_count(big)
    weights = [read for read in reads if read[0] == "model.safetensors"]
    header_length = (
        len(safetensors_bytes(big))
        - 2 * 1024 * 1024
        - sum(2 * 64 * n for n in (100, 64, 32, 64, 100))
        - 4 * 64
        - 8
    )
    assert weights == [("model.safetensors", 0, 8), ("model.safetensors", 8, header_length)]
    assert sum(length for _, _, length in reads) < 10_000


def test_a_sharded_model_counts_every_shard(client_for: Any, owner: Any, bucket: Any, s3_server: str) -> None:
    names = sorted(TINY_LLAMA_TENSORS)
    shards = {"model-00001-of-00002.safetensors": names[:3], "model-00002-of-00002.safetensors": names[3:]}
    for shard, tensors in shards.items():
        body = safetensors_bytes({name: TINY_LLAMA_TENSORS[name] for name in tensors})
        bucket.put_object(Bucket=bucket.name, Key=f"sharded/{shard}", Body=body)
    index = {
        "metadata": {},
        "weight_map": {name: shard for shard, tensors in shards.items() for name in tensors},
    }
    bucket.put_object(Bucket=bucket.name, Key="sharded/model.safetensors.index.json", Body=json.dumps(index))
    bucket.put_object(Bucket=bucket.name, Key="sharded/config.json", Body=json.dumps(TINY_LLAMA_CONFIG))
    response = register(client_for(owner), s3_server, uri=f"s3://{bucket.name}/sharded/")
    assert response.status_code == 201, response.content
    assert response.json()["parameters"] == parameter_count(TINY_LLAMA_TENSORS)
    assert response.json()["facts"]["safetensors_files"] == sorted(shards)
    assert response.json()["tasks"] == ["text-generation"]  # no chat template in the folder


def test_the_secret_is_kept_encrypted_and_never_shown(
    registered: dict[str, Any], client_for: Any, owner: Any, member: Any
) -> None:
    custom = CustomModel.objects.get(pk=registered["id"])
    assert custom.store_secret_encrypted and SECRET not in custom.store_secret_encrypted
    assert custom_models.store_folder(custom).client._request_signer._credentials.secret_key == SECRET
    for user in (owner, member):
        listed = client_for(user).get(CUSTOM).content.decode()
        shown = client_for(user).get(f"{CUSTOM}{registered['id']}/").content.decode()
        page = client_for(user).get(f"/custom-models/{registered['id']}/").content.decode()
        assert SECRET not in listed + shown + page
        assert "secret_access_key" not in json.loads(shown)


def test_an_outsider_neither_sees_nor_deploys_it(
    registered: dict[str, Any], client_for: Any, outsider: Any, settings: Any
) -> None:
    client = client_for(outsider)
    assert registered["id"] not in [item["id"] for item in client.get(CUSTOM).json()["results"]]
    assert client.get(f"{CUSTOM}{registered['id']}/").status_code == 404
    assert client.delete(f"{CUSTOM}{registered['id']}/").status_code == 404
    settings.SERVING_BACKEND = "kubernetes"
    deploy = client.post(
        "/api/deployments/",
        {"name": "theirs", "model": registered["slug"], "instance_type": "aws-g5-xlarge"},
        format="json",
    )
    assert deploy.status_code == 400 and "model" in deploy.json()


@pytest.mark.parametrize(
    ("body", "field", "words"),
    [
        ({"uri": ""}, "uri", "Needed"),
        ({"access_key_id": ""}, "access_key_id", "Needed"),
        ({"secret_access_key": ""}, "secret_access_key", "Needed"),
        ({"uri": "https://bucket/models"}, "uri", "s3://bucket/path"),
        ({"uri": "s3://Bucket_Upper/models"}, "uri", "lowercase"),
        ({"uri": "s3://weights/../other"}, "uri", "'.' or '..'"),
        ({"endpoint_url": "http://169.254.169.254"}, "endpoint_url", "CUSTOM_MODEL_STORE_ENDPOINTS"),
    ],
)
def test_a_malformed_registration_is_refused_naming_the_field(
    client_for: Any, owner: Any, uri: str, s3_server: str, body: dict[str, str], field: str, words: str
) -> None:
    response = register(client_for(owner), s3_server, **{"uri": uri, **body})
    assert response.status_code == 400, response.content
    assert words in json.dumps(response.json()[field]), response.json()
    assert not CustomModel.objects.exists() and not ModelCard.every_card.filter(organization__isnull=False)


def test_a_folder_the_store_cannot_serve_is_refused_saying_why(
    client_for: Any, owner: Any, bucket: Any, tmp_path: Path, s3_server: str
) -> None:
    client = client_for(owner)

    def refusal(prefix: str, **body: Any) -> str:
        response = register(client, s3_server, uri=f"s3://{bucket.name}/{prefix}", name=prefix, **body)
        assert response.status_code == 400, response.content
        return " ".join(response.json()["uri"])

    assert (
        "there is no such bucket"
        in register(client, s3_server, uri="s3://no-such-bucket-here/m").json()["uri"][0]
    )
    assert "config.json is missing" in refusal("empty")
    upload(
        bucket,
        write_model(tmp_path / "odd", config={**TINY_LLAMA_CONFIG, "architectures": ["NoSuchLM"]}),
        "odd",
    )
    assert "NoSuchLM" in refusal("odd")
    bucket.put_object(Bucket=bucket.name, Key="broken/config.json", Body=json.dumps(TINY_LLAMA_CONFIG))
    bucket.put_object(
        Bucket=bucket.name, Key="broken/model.safetensors", Body=(10**9).to_bytes(8, "little") + b"{}"
    )
    assert "which the file or the format does not allow" in refusal("broken")
    bucket.put_object(Bucket=bucket.name, Key="pickled/config.json", Body=json.dumps(TINY_LLAMA_CONFIG))
    bucket.put_object(Bucket=bucket.name, Key="pickled/pytorch_model.bin", Body=b"weights")
    assert "neither model.safetensors nor model.safetensors.index.json" in refusal("pickled")
    assert not CustomModel.objects.exists()


def test_a_store_that_cannot_be_reached_is_refused_as_worth_retrying(
    client_for: Any, owner: Any, settings: Any
) -> None:
    settings.CUSTOM_MODEL_STORE_ENDPOINTS = ["http://127.0.0.1:9"]  # the discard port: nothing listens
    response = register(client_for(owner), "http://127.0.0.1:9", uri="s3://weights/model")
    assert response.status_code == 400
    assert "could not be reached" in response.json()["uri"][0] and "try again" in response.json()["uri"][0]


@pytest.mark.parametrize(
    ("code", "words"),
    [
        ("AccessDenied", "the key given may not read it"),
        ("InvalidAccessKeyId", "the store knows no such access key id"),
        ("SignatureDoesNotMatch", "the secret access key does not match the access key id"),
    ],
)
def test_a_key_the_store_refuses_is_named_in_words(code: str, words: str) -> None:
    folder = StoreFolder(client=None, bucket="weights", prefix="models/")
    refusal = ClientError({"Error": {"Code": code}, "ResponseMetadata": {"HTTPStatusCode": 403}}, "GetObject")
    error = folder._error(refusal, "Reading config.json")
    assert isinstance(error, StoreAccessError) and not error.transient and error.about_the_key
    assert error.message == f"Reading config.json in s3://weights/models/: {words} ({code})."


def test_this_machine_copies_the_weights_once_and_again_only_what_changed(
    registered: dict[str, Any], bucket: Any, settings: Any, tmp_path: Path, uri: str
) -> None:
    settings.DATA_DIR = str(tmp_path / "data")
    custom = CustomModel.objects.get(pk=registered["id"])
    heard: list[tuple[int, int]] = []
    copy = custom_models.copy_store_weights(custom, lambda done, total: heard.append((done, total)))
    assert copy == tmp_path / "data" / "store-copies" / registered["slug"]
    assert sorted(path.name for path in copy.iterdir() if not path.name.startswith(".")) == [
        "config.json", "model.safetensors", "tokenizer_config.json"
    ]  # fmt: skip
    assert (copy / "model.safetensors").read_bytes() == safetensors_bytes(TINY_LLAMA_TENSORS)
    total = registered["facts"]["bytes"]
    assert heard[0] == (0, total) and heard[-1] == (total, total)
    # The copy is what a local engine loads; it lies outside the folders any organisation registers from.
    card = ModelCard.every_card.get(slug=registered["slug"])
    assert services.model_spec(card).weights_path == str(copy)
    assert not any(copy.is_relative_to(root) for root in settings.CUSTOM_MODEL_ROOTS)

    heard.clear()
    custom_models.copy_store_weights(custom, lambda done, total: heard.append((done, total)))
    assert heard == [(0, 0)]  # nothing changed, nothing copied
    changed = {**TINY_LLAMA_CONFIG, "max_position_embeddings": 4096}
    bucket.put_object(Bucket=bucket.name, Key="models/tiny-llama/config.json", Body=json.dumps(changed))
    custom_models.copy_store_weights(custom, lambda done, total: heard.append((done, total)))
    assert json.loads((copy / "config.json").read_text())["max_position_embeddings"] == 4096
    assert heard[-1] == (len(json.dumps(changed)), len(json.dumps(changed)))


def test_a_clusters_engines_stream_the_weights_with_the_key_from_a_secret_of_their_own(
    registered: dict[str, Any], client_for: Any, owner: Any, settings: Any, uri: str, s3_server: str
) -> None:
    settings.SERVING_BACKEND = "kubernetes"
    response = client_for(owner).post(
        "/api/deployments/",
        {"name": "mine", "model": registered["slug"], "instance_type": "aws-g5-xlarge"},
        format="json",
    )
    assert response.status_code == 201, response.content
    spec = services.spec_for(Deployment.objects.get(name="mine"))
    assert SECRET not in repr(spec)
    objects = manifests.build_objects(spec, manifests.ClusterSettings())
    kinds = [obj["kind"] for obj in objects]
    assert kinds.index("Secret") < kinds.index("Deployment")
    secret = objects[kinds.index("Secret")]
    assert secret_values(secret) == {"AWS_ACCESS_KEY_ID": KEY_ID, "AWS_SECRET_ACCESS_KEY": SECRET}
    deployment = objects[kinds.index("Deployment")]
    assert SECRET not in json.dumps(deployment)
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    assert container["args"][:3] == [f"{uri}/", "--load-format", "runai_streamer"]
    env = {item["name"]: item.get("value", item.get("valueFrom")) for item in container["env"]}
    assert env["AWS_SECRET_ACCESS_KEY"] == {
        "secretKeyRef": {"name": secret["metadata"]["name"], "key": "AWS_SECRET_ACCESS_KEY"}
    }
    assert env["AWS_ENDPOINT_URL"] == s3_server and env["RUNAI_STREAMER_S3_USE_VIRTUAL_ADDRESSING"] == "0"
    assert env["AWS_EC2_METADATA_DISABLED"] == "true"  # never the node's own cloud identity
    # What members may read of it (the manifests for review or GitOps) names the key's Secret, not its value.
    shown = client_for(owner).get(f"/api/deployments/{response.json()['id']}/manifests/").content.decode()
    assert "kind: Secret" in shown and "AWS_SECRET_ACCESS_KEY" in shown and SECRET not in shown


def test_an_endpoint_withdrawn_after_registration_is_neither_deployed_nor_applied_on_a_cluster(
    registered: dict[str, Any], client_for: Any, owner: Any, settings: Any
) -> None:
    settings.SERVING_BACKEND = "kubernetes"
    client = client_for(owner)
    body = {"name": "mine", "model": registered["slug"], "instance_type": "aws-g5-xlarge"}
    created = client.post("/api/deployments/", body, format="json")
    assert created.status_code == 201, created.content
    settings.CUSTOM_MODEL_STORE_ENDPOINTS = []  # a platform admin takes the endpoint off the list
    refused = client.post("/api/deployments/", {**body, "name": "again"}, format="json")
    assert refused.status_code == 400
    assert "is no longer an object store this platform reads custom models from" in refused.json()["model"][0]
    with pytest.raises(PermanentBackendError, match="CUSTOM_MODEL_STORE_ENDPOINTS"):
        services.spec_for(Deployment.objects.get(name="mine"))  # what the worker applies: nothing


def test_the_web_form_registers_it_and_no_page_shows_the_secret(
    browser_for: Any, owner: Any, outsider: Any, uri: str, s3_server: str
) -> None:
    browser = browser_for(owner)
    form = browser.get("/custom-models/").content.decode()
    assert 'name="uri"' in form and 'name="secret_access_key" type="password"' in form and s3_server in form
    fields = {
        "name": "tiny",
        "source": "store",
        "uri": uri,
        "endpoint_url": s3_server,
        "access_key_id": KEY_ID,
    }
    refused = browser.post("/custom-models/", fields)
    assert refused.status_code == 400 and 'id="error-secret_access_key"' in refused.content.decode()
    response = browser.post("/custom-models/", {**fields, "secret_access_key": SECRET})
    custom = CustomModel.objects.get()
    assert response.status_code == 302 and response["Location"] == f"/custom-models/{custom.pk}/"
    page = browser.get(response["Location"]).content.decode()
    assert f"{uri}/" in page and KEY_ID in page and s3_server in page and SECRET not in page
    assert browser_for(outsider).get(response["Location"]).status_code == 404


def test_an_owner_replaces_the_key_and_its_deployments_are_applied_again_with_it(
    registered: dict[str, Any],
    client_for: Any,
    owner: Any,
    settings: Any,
    django_capture_on_commit_callbacks: Any,
) -> None:
    settings.SERVING_BACKEND = "kubernetes"
    client = client_for(owner)
    for name in ("one", "two"):
        body = {"name": name, "model": registered["slug"], "instance_type": "aws-g5-xlarge"}
        assert client.post("/api/deployments/", body, format="json").status_code == 201
    with django_capture_on_commit_callbacks() as applied:
        response = client.post(
            f"{CUSTOM}{registered['id']}/key/",
            {"access_key_id": "AKIDROTATED", "secret_access_key": "rotated-secret"},
            format="json",
        )
    assert response.status_code == 200, response.content
    assert (
        response.json()["access_key_id"] == "AKIDROTATED"
        and "rotated-secret" not in response.content.decode()
    )
    assert len(applied) == 2  # each deployment's provisioning, enqueued once the key is saved
    for deployment in Deployment.objects.all():
        store = services.spec_for(deployment).model.store
        assert store is not None and (store.access_key_id, store.secret_access_key) == (
            "AKIDROTATED",
            "rotated-secret",
        )


def test_replacing_a_key_is_refused_naming_the_field_and_walled_off(
    registered: dict[str, Any],
    client_for: Any,
    owner: Any,
    member: Any,
    outsider: Any,
    tmp_path: Path,
    settings: Any,
) -> None:
    url = f"{CUSTOM}{registered['id']}/key/"
    new = {"access_key_id": "AKIDNEW", "secret_access_key": "new-secret"}
    missing = client_for(owner).post(url, {"access_key_id": "AKIDNEW"}, format="json")
    assert missing.status_code == 400 and "secret_access_key" in missing.json()
    assert client_for(member).post(url, new, format="json").status_code == 403
    assert client_for(outsider).post(url, new, format="json").status_code == 404
    settings.CUSTOM_MODEL_ROOTS = [str(tmp_path)]
    folder = client_for(owner).post(
        CUSTOM, {"name": "folder", "source": "path", "path": str(write_model(tmp_path / "m"))}, format="json"
    )
    refused = client_for(owner).post(f"{CUSTOM}{folder.json()['id']}/key/", new, format="json")
    assert refused.status_code == 400 and "has no key to replace" in refused.json()["source"][0]
    assert CustomModel.objects.get(pk=registered["id"]).store_access_key_id == KEY_ID


def test_the_models_page_replaces_the_key_for_owners_only(
    registered: dict[str, Any], browser_for: Any, owner: Any, member: Any, outsider: Any, settings: Any,
    s3_server: str,
) -> None:  # fmt: skip
    page = f"/custom-models/{registered['id']}/"
    assert 'id="replace-key"' in browser_for(owner).get(page).content.decode()
    assert 'id="replace-key"' not in browser_for(member).get(page).content.decode()
    new = {"access_key_id": "AKIDNEW", "secret_access_key": "new-secret"}
    assert browser_for(member).post(f"{page}key/", new).status_code == 403
    assert browser_for(outsider).post(f"{page}key/", new).status_code == 404
    refused = browser_for(owner).post(f"{page}key/", {"access_key_id": "AKIDNEW"})
    assert refused.status_code == 400 and 'id="error-secret_access_key"' in refused.content.decode()
    settings.CUSTOM_MODEL_STORE_ENDPOINTS = []  # the store is no longer one the platform reads
    out_of_reach = browser_for(owner).post(f"{page}key/", new)
    assert out_of_reach.status_code == 400
    assert 'id="error-form"' in out_of_reach.content.decode()
    assert "no longer an object store this platform reads" in out_of_reach.content.decode()
    settings.CUSTOM_MODEL_STORE_ENDPOINTS = [s3_server]
    response = browser_for(owner).post(f"{page}key/", new)
    assert response.status_code == 302 and response["Location"] == page
    assert "AKIDNEW" in browser_for(owner).get(page).content.decode()


def test_this_machines_copies_are_no_folder_anyone_registers_whatever_the_roots(
    registered: dict[str, Any], client_for: Any, owner: Any, outsider: Any, settings: Any, tmp_path: Path
) -> None:
    settings.DATA_DIR = str(tmp_path / "data")
    settings.CUSTOM_MODEL_ROOTS = [str(tmp_path)]  # an admin's root above the data folder
    copy = custom_models.copy_store_weights(CustomModel.objects.get(pk=registered["id"]), lambda *_: None)
    for user in (outsider, owner):
        body = {"name": "copied", "source": "path", "path": str(copy)}
        response = client_for(user).post(CUSTOM, body, format="json")
        assert (
            response.status_code == 400
            and "copies of models read from object stores" in response.json()["path"][0]
        )


def test_a_copy_drops_files_gone_from_the_folder_and_goes_with_the_model(
    registered: dict[str, Any], bucket: Any, client_for: Any, owner: Any, settings: Any, tmp_path: Path,
    django_capture_on_commit_callbacks: Any,
) -> None:  # fmt: skip
    settings.DATA_DIR = str(tmp_path / "data")
    custom = CustomModel.objects.get(pk=registered["id"])
    copy = custom_models.copy_store_weights(custom, lambda *_: None)
    (copy / ".part-left-by-a-crash").write_bytes(b"half")
    bucket.delete_object(Bucket=bucket.name, Key="models/tiny-llama/tokenizer_config.json")
    custom_models.copy_store_weights(custom, lambda *_: None)
    assert sorted(path.name for path in copy.iterdir() if not path.name.startswith(".")) == [
        "config.json", "model.safetensors"
    ]  # fmt: skip
    assert not (copy / ".part-left-by-a-crash").exists()
    with django_capture_on_commit_callbacks(execute=True):
        assert client_for(owner).delete(f"{CUSTOM}{registered['id']}/").status_code == 204
    assert not copy.exists()


def test_one_copy_of_a_model_at_a_time(registered: dict[str, Any], settings: Any, tmp_path: Path) -> None:
    settings.DATA_DIR = str(tmp_path / "data")
    # Loaded whole here: the other thread has a database connection of its own, outside this test's.
    custom = CustomModel.objects.select_related("card").get(pk=registered["id"])
    started, go_on = threading.Event(), threading.Event()

    def slow(done: int, total: int) -> None:
        started.set()
        go_on.wait(30)

    first = threading.Thread(target=custom_models.copy_store_weights, args=(custom, slow))
    first.start()
    try:
        assert started.wait(30)
        with pytest.raises(custom_models.CopyInProgress):
            custom_models.copy_store_weights(custom, lambda *_: None)
    finally:
        go_on.set()
        first.join(60)
    assert custom_models.copy_store_weights(custom, lambda *_: None).is_dir()  # free again once it ended


def test_names_that_are_no_file_of_the_folder_are_left_out(bucket: Any, uri: str, s3_server: str) -> None:
    for key in ("models/tiny-llama/back\\slash", "models/tiny-llama/bell\x07", "models/tiny-llama/sub/x"):
        bucket.put_object(Bucket=bucket.name, Key=key, Body=b"x")
    folder = StoreFolder.connect(
        uri=uri, endpoint_url=s3_server, region="", access_key_id=KEY_ID, secret_access_key=SECRET
    )
    assert sorted(folder.files()) == [
        "config.json",
        "model.safetensors",
        "pytorch_model.bin",
        "tokenizer_config.json",
    ]


def test_a_region_that_is_no_region_is_refused_naming_it(
    client_for: Any, owner: Any, uri: str, s3_server: str
):
    response = register(client_for(owner), s3_server, uri=uri, region="Not a region!")
    assert response.status_code == 400 and "region" in response.json()


def test_a_deployment_the_store_fails_says_what_to_do_and_a_new_key_applies_it_again(
    registered: dict[str, Any], acme: Any, settings: Any, tmp_path: Path, client_for: Any, owner: Any,
    s3_server: str, django_capture_on_commit_callbacks: Any,
) -> None:  # fmt: skip
    settings.DATA_DIR = str(tmp_path / "data")
    card = ModelCard.every_card.get(slug=registered["slug"])
    deployment = Deployment.objects.create(
        organization=acme, name="mine", model_card=card, backend="local", status="pending",
        instance_type=InstanceType.objects.get(slug="local-cpu"),
    )  # fmt: skip
    assert tasks._copy_store_weights(deployment, last_attempt=False) == "copied"

    settings.CUSTOM_MODEL_STORE_ENDPOINTS = []  # a platform admin took the store off the list
    assert tasks._copy_store_weights(deployment, last_attempt=False) == "failed"
    deployment.refresh_from_db()
    assert deployment.status == "failed"
    assert "no longer an object store this platform reads" in deployment.status_message

    settings.CUSTOM_MODEL_STORE_ENDPOINTS = [s3_server, "http://127.0.0.1:9"]
    CustomModel.objects.filter(pk=registered["id"]).update(store_endpoint_url="http://127.0.0.1:9")
    Deployment.objects.filter(pk=deployment.pk).update(status="pending")
    with pytest.raises(TransientBackendError):  # retried while attempts remain
        tasks._copy_store_weights(deployment, last_attempt=False)
    assert tasks._copy_store_weights(deployment, last_attempt=True) == "failed"
    deployment.refresh_from_db()
    assert deployment.status == "failed" and "could not be reached" in deployment.status_message

    CustomModel.objects.filter(pk=registered["id"]).update(store_endpoint_url=s3_server)
    with django_capture_on_commit_callbacks() as applied:
        body = {"access_key_id": "AKIDNEW", "secret_access_key": "new-secret"}
        assert (
            client_for(owner).post(f"{CUSTOM}{registered['id']}/key/", body, format="json").status_code == 200
        )
    deployment.refresh_from_db()
    assert (deployment.status, deployment.status_message) == (
        "pending",
        "Applying again with tiny's new read key.",
    )
    assert len(applied) == 1
