"""Real vLLM engines (CPU) for the tests, and the process helpers the end-to-end tests share.

The two small catalog models (SmolLM2 135M Instruct and all-MiniLM-L6-v2) start once per test run, each
bound to a core of its own (unbound, vLLM puts both on core 0 and they starve each other), and serve
every test that needs an engine behind a deployment row: the gateway package, the evaluation and the
deployment snippets. Starting them costs about fifty seconds; idle, they cost no CPU.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import ssl
import subprocess
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from serving.local import engine_env

CHAT, EMBED = "smollm2-135m-instruct", "all-minilm-l6-v2"
# Names the chat engine also answers to (vLLM takes several served names and answers under the first):
# the prompt router's end-to-end tests deploy it twice, under these names.
ROUTER_CANDIDATES = ("small", "large")


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def wait_healthy(
    url: str, process: subprocess.Popen[bytes], timeout: float, context: ssl.SSLContext | None = None
) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"{url} exited with {process.returncode}")
        try:
            with urllib.request.urlopen(url, timeout=2, context=context):
                return
        except OSError:
            time.sleep(0.5)
    raise RuntimeError(f"{url} did not become healthy in {timeout}s")


def stop_group(process: subprocess.Popen[bytes], grace: float = 20) -> None:
    """SIGTERM the process group, then SIGKILL what is left after `grace` seconds."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGTERM)
    with contextlib.suppress(subprocess.TimeoutExpired):
        process.wait(timeout=grace)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)
    process.wait()


def engine_prepared() -> bool:
    directory = engine_env.engine_dir()
    return engine_env.engine_python(directory).exists() and all(
        engine_env.model_path(directory, slug) for slug in (CHAT, EMBED)
    )


def require_prepared_engine() -> None:
    """Skip where the engine is not prepared, except in CI, which must have prepared it."""
    if not engine_prepared():
        if os.environ.get("CI"):
            raise RuntimeError("CI must prepare the engine first (python3 run.py engine)")
        pytest.skip("the local engine is not prepared: python3 run.py engine")


@contextlib.contextmanager
def running_engines() -> Iterator[dict[str, str]]:
    """SmolLM2 (served as `tiny-chat` and the router candidates) on core 0 and MiniLM (`minilm`) on core
    1, until the block ends; their base URLs by catalog slug."""
    require_prepared_engine()
    directory = engine_env.engine_dir()
    processes, urls = [], {}
    for slug, served, cpus, extra in (
        (CHAT, "tiny-chat", "0", {"dtype": "float32", "max_model_len": 2048}),
        (EMBED, "minilm", "1", {"runner": "pooling", "max_model_len": 256}),
    ):
        port = free_port()
        tmp = Path(tempfile.mkdtemp(prefix="test-engine-"))
        command = engine_env.engine_command(
            engine_env.model_path(directory, slug), port=port, served_model_name=served, **extra
        )
        if slug == CHAT:
            after = command.index("--served-model-name") + 2
            command[after:after] = list(ROUTER_CANDIDATES)
        log = (tmp / "engine.log").open("wb")
        processes.append(
            subprocess.Popen(
                command,
                env=engine_env.engine_environment(directory, tmp, cpus=cpus),
                stdout=log,
                stderr=log,
                start_new_session=True,
            )
        )
        urls[slug] = f"http://127.0.0.1:{port}"
    try:
        for process, url in zip(processes, urls.values(), strict=True):
            wait_healthy(f"{url}/health", process, timeout=240)
        yield urls
    finally:
        for process in processes:
            stop_group(process)


_PARSER_SCRIPT = """
import contextlib, io, json, sys
from vllm.entrypoints.launchers.cli_args import make_arg_parser
from vllm.utils.argparse_utils import FlexibleArgumentParser
for line in sys.stdin:
    errors = io.StringIO()
    try:
        with contextlib.redirect_stderr(errors):
            parsed = make_arg_parser(FlexibleArgumentParser()).parse_args(json.loads(line))
        answer = {"args": vars(parsed)}
    except SystemExit:
        answer = {"error": errors.getvalue()}
    print(json.dumps(answer, default=repr), flush=True)
"""


class VllmArgumentParser:
    """vLLM's own command-line parser (`vllm serve`'s: the server's flags and the engine's), in the engine's
    environment: one process imports vLLM once (about ten seconds) and then parses any number of command
    lines. Values that are not JSON come back as their repr."""

    def __init__(self) -> None:
        python = engine_env.engine_python(engine_env.engine_dir())
        if not python.exists():
            if os.environ.get("CI"):
                raise RuntimeError("CI must prepare the engine first (python3 run.py engine)")
            pytest.skip("the engine environment is not prepared here (python3 run.py engine)")
        self.process = subprocess.Popen(
            [str(python), "-c", _PARSER_SCRIPT],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )

    def parse(self, args: list[str]) -> dict[str, Any]:
        """The parsed arguments by name (values vLLM's parser gives, as JSON), or AssertionError with
        vLLM's message when it refuses them."""
        assert self.process.stdin is not None and self.process.stdout is not None
        self.process.stdin.write(json.dumps(args) + "\n")
        self.process.stdin.flush()
        line = self.process.stdout.readline()
        assert line, f"vLLM's parser exited with {self.process.wait()}"
        answer = json.loads(line)
        assert "error" not in answer, answer["error"][-2000:]
        return dict(answer["args"])

    def close(self) -> None:
        self.process.kill()  # nothing to save, and vLLM's exit handlers take seconds
        self.process.wait(timeout=30)
