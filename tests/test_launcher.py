"""The README's first command, for real: with no DATABASE_URL or REDIS_URL it starts embedded
PostgreSQL and Valkey, migrates, loads the catalog, serves the API under gunicorn with a Celery worker
and beat; SIGINT (Ctrl-C) stops all of it, leaving no process behind. Its secrets: an owner-only data
folder, secret files that are never readable by others, and an admin password shown on the first start
only."""

import json
import os
import signal
import socket
import stat
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from marketplace import launcher

ROOT = Path(__file__).resolve().parent.parent


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


@pytest.mark.slow
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
    # A readable console: beat queues reconcile and the usage flush at once and every 5 s, and neither
    # Celery's per-task lines nor a pass that changed nothing may show.
    output = (tmp_path / "run.log").read_text()
    assert "Sending due task" not in output and "] received" not in output and "succeeded in" not in output
    time.sleep(1)
    assert processes_marked(marker.split("=")[1], tmp_path / "data") == []


# The demo's secrets, unit by unit (the run above shows them in place).


@pytest.fixture
def umask_022() -> Iterator[None]:
    """The usual umask, under which a plainly created file is readable by everyone."""
    previous = os.umask(0o022)
    try:
        yield
    finally:
        os.umask(previous)


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.mark.usefixtures("umask_022")
def test_the_data_folder_is_owner_only_even_when_it_existed(tmp_path: Path) -> None:
    fresh, existing = tmp_path / "fresh" / "data", tmp_path / "existing"
    existing.mkdir(mode=0o755)
    launcher._private_folder(fresh)
    launcher._private_folder(existing)
    assert mode(fresh) == 0o700
    assert mode(existing) == 0o700


@pytest.mark.usefixtures("umask_022")
def test_a_secret_file_is_created_owner_only_with_its_contents(tmp_path: Path) -> None:
    value, created = launcher._private_file(tmp_path / "data" / "secret-key", "s3cret\n")
    assert (value, created) == ("s3cret", True)
    assert mode(tmp_path / "data" / "secret-key") == 0o600
    assert mode(tmp_path / "data") == 0o700
    assert sorted(p.name for p in (tmp_path / "data").iterdir()) == ["secret-key"]  # no scratch left


@pytest.mark.usefixtures("umask_022")
def test_a_secret_is_never_readable_by_others_while_it_is_written(tmp_path: Path, monkeypatch: Any) -> None:
    """Whatever writes the secret (a plain open, os.write), every file in the folder is already
    owner-only at that moment."""
    folder = tmp_path / "data"
    seen: list[tuple[str, int]] = []

    def check_folder() -> None:
        seen.extend((p.name, mode(p)) for p in folder.iterdir())

    real_write, real_write_text, real_fsync = os.write, Path.write_text, os.fsync

    def spying_write_text(self: Path, *args: Any, **kwargs: Any) -> int:
        written = real_write_text(self, *args, **kwargs)
        check_folder()
        return written

    def spying_fsync(fd: int) -> None:
        real_fsync(fd)
        check_folder()

    monkeypatch.setattr(Path, "write_text", spying_write_text)
    monkeypatch.setattr(os, "fsync", spying_fsync)
    monkeypatch.setattr(os, "write", lambda fd, data: (real_write(fd, data), check_folder())[0])
    launcher._private_file(folder / "admin-password", "pw")
    assert seen, "the secret was written without passing any of the watched calls"
    assert all(file_mode & 0o077 == 0 for _, file_mode in seen), seen


@pytest.mark.usefixtures("umask_022")
def test_an_existing_secret_is_read_not_replaced_and_tightened(tmp_path: Path) -> None:
    path = tmp_path / "admin-password"
    path.write_text("from-an-earlier-start\n")
    path.chmod(0o644)
    assert launcher._private_file(path, "new") == ("from-an-earlier-start", False)
    assert mode(path) == 0o600


def test_the_admin_password_is_printed_on_the_first_start_only(tmp_path: Path, monkeypatch: Any) -> None:
    monkeypatch.delenv("DEMO_ADMIN_PASSWORD", raising=False)
    password, first = launcher._demo_admin_password(tmp_path)
    again, later = launcher._demo_admin_password(tmp_path)
    assert (again, first, later) == (password, True, False)
    url = "http://127.0.0.1:8000"
    assert password in launcher.sign_in_line(password, first, tmp_path, url)
    later_line = launcher.sign_in_line(again, later, tmp_path, url)
    assert password not in later_line
    assert str(tmp_path / "admin-password") in later_line and "/admin/password_change/" in later_line


def test_a_chosen_admin_password_is_never_printed(tmp_path: Path, monkeypatch: Any) -> None:
    monkeypatch.setenv("DEMO_ADMIN_PASSWORD", "chosen-by-me")
    password, first = launcher._demo_admin_password(tmp_path)
    assert (password, first) == ("chosen-by-me", False)
    assert "chosen-by-me" not in launcher.sign_in_line(password, first, tmp_path, "http://h")
    assert not (tmp_path / "admin-password").exists()


def test_the_suite_runs_on_two_processes_with_their_own_redis_unless_the_arguments_choose() -> None:
    from marketplace.launcher import parallel_arguments

    chosen_by_default = parallel_arguments(["-k", "subscriptions"])
    assert chosen_by_default[:2] == ["-p", "tests.parallel"]
    assert chosen_by_default[chosen_by_default.index("-n") + 1] == str(min(2, os.cpu_count() or 1))
    for choice in (["-n", "0"], ["-n4"], ["--numprocesses=3"]):
        assert "-n" not in parallel_arguments(choice)
        assert parallel_arguments(choice)[:2] == ["-p", "tests.parallel"]


def test_each_test_process_gets_a_redis_server_of_its_own(tmp_path: Path) -> None:
    """Two worker processes of a run, each with tests/parallel.py loaded, see different Redis servers."""
    probe = tmp_path / "test_probe.py"
    probe.write_text(
        "import os\n"
        "def test_where():\n"
        "    worker = os.environ['PYTEST_XDIST_WORKER']\n"
        "    open(os.environ['OUT'] + worker, 'w').write(os.environ['REDIS_URL'])\n"
    )
    environment = {**os.environ, "OUT": str(tmp_path / "url-"), "PYTHONPATH": str(ROOT)}
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "tests.parallel", "-n", "2", "--dist", "each",
         "-p", "no:django", "-p", "no:cacheprovider", "-q", str(probe)],
        cwd=tmp_path, env=environment, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout[-2000:]
    urls = {path.read_text() for path in tmp_path.glob("url-*")}
    assert len(urls) == 2 and os.environ.get("REDIS_URL") not in urls


NOTE = (  # what each test of the generated modules calls: the test's name, in its process's file
    "def note(name):\n"
    "    with open(os.environ['OUT'] + os.environ['PYTEST_XDIST_WORKER'], 'a') as f:\n"
    "        f.write(name + '\\n')\n"
)


def test_a_slow_modules_tests_run_on_one_test_process_in_the_collections_order(tmp_path: Path) -> None:
    """With the README command's arguments, a slow module's tests stay together (its module fixtures
    start once), the others still spread over both processes, and each process runs its tests in the
    collection's order: a big group collected last (as transactional tests are) never runs before the
    single tests collected ahead of it, whose catalog its flush would empty."""
    from marketplace.launcher import parallel_arguments

    (tmp_path / "test_1_quick.py").write_text(
        "import os, pytest, time\n"
        "@pytest.mark.parametrize('n', range(8))\n"
        "def test_quick(n):\n"
        "    time.sleep(0.2)\n"
        "    note(f'quick-{n}')\n" + NOTE
    )
    (tmp_path / "test_2_slow.py").write_text(
        "import os, pytest\n"
        "pytestmark = pytest.mark.slow\n"
        "@pytest.mark.parametrize('n', range(8))\n"
        "def test_slow(n):\n"
        "    note(f'slow-{n}')\n" + NOTE
    )
    environment = {**os.environ, "OUT": str(tmp_path / "ran-"), "PYTHONPATH": str(ROOT)}
    result = subprocess.run(
        [sys.executable, "-m", "pytest", *parallel_arguments([]), "-p", "no:django", "-p", "no:cacheprovider",
         "-q", "-m", "slow or not slow", "-o", "markers=slow", "test_1_quick.py", "test_2_slow.py"],
        cwd=tmp_path, env=environment, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout[-2000:]
    ran = {path.name[4:]: path.read_text().split() for path in tmp_path.glob("ran-*")}
    assert set(ran) == {"gw0", "gw1"}
    slow = [worker for worker, names in ran.items() if any(name.startswith("slow") for name in names)]
    assert len(slow) == 1 and len([name for name in ran[slow[0]] if name.startswith("slow")]) == 8
    for names in ran.values():
        kinds = [name.split("-")[0] for name in names]
        assert kinds == sorted(kinds), names  # every quick test before any slow one
