"""The README's first command, for real: with no DATABASE_URL or REDIS_URL it starts embedded
PostgreSQL and Valkey, migrates, loads the catalog, serves the API under gunicorn with a Celery worker
and beat; SIGINT (Ctrl-C) stops all of it, leaving no process behind."""

import json
import os
import signal
import socket
import subprocess
import time
import urllib.request
import uuid
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

pytestmark = pytest.mark.slow


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def processes_marked(marker: str, data_dir: Path) -> list[str]:
    """Processes that carry the run's marker in their environment or its data folder on their command line."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            environ = (entry / "environ").read_bytes()
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if marker.encode() in environ or str(data_dir) in cmdline:
            found.append(f"{entry.name}: {cmdline}")
    return found


def test_first_readme_command_runs_everything_and_ctrl_c_stops_it(tmp_path: Path) -> None:
    marker = f"MARKETPLACE_TEST_RUN={uuid.uuid4()}"
    port = free_port()
    environment = {
        k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "REDIS_URL", "SECRET_KEY")
    }
    environment.update(
        DATA_DIR=str(tmp_path / "data"), PORT=str(port), MARKETPLACE_TEST_RUN=marker.split("=")[1]
    )
    log = (tmp_path / "run.log").open("w")
    process = subprocess.Popen(
        ["python3", "run.py"], cwd=ROOT, env=environment, stdout=log, stderr=subprocess.STDOUT
    )
    try:
        deadline = time.monotonic() + 240
        count = 0
        while time.monotonic() < deadline and process.poll() is None:
            try:
                with urllib.request.urlopen(
                    f"http://127.0.0.1:{port}/api/models/?page_size=1", timeout=5
                ) as answer:
                    count = json.load(answer)["count"]
                    break
            except OSError:
                time.sleep(1)
        assert count >= 100, (tmp_path / "run.log").read_text()[-3000:]
        while "Sign in as admin / " not in (output := (tmp_path / "run.log").read_text()):
            assert time.monotonic() < deadline and process.poll() is None, output[-3000:]
            time.sleep(0.2)
        assert "Started worker" in output and "Started beat" in output
        running = processes_marked(marker.split("=")[1], tmp_path / "data")
        # The check below must be able to fail: while running, it sees web, worker, beat and the servers.
        assert any("gunicorn" in p for p in running) and any("postgres" in p for p in running), running
        assert any("celery" in p and " beat" in p for p in running), running
    finally:
        process.send_signal(signal.SIGINT)
        code = process.wait(timeout=90)
        log.close()
    assert code == 0, (tmp_path / "run.log").read_text()[-3000:]
    time.sleep(1)
    assert processes_marked(marker.split("=")[1], tmp_path / "data") == []
