"""Gateway benchmark: what the invoke API adds over calling the engine directly, beside LiteLLM and nginx.

    .venv/bin/python bench/gateway.py [--requests 2000] [--seconds 10] [--concurrency 1,64,256]
        [--systems direct,gateway,litellm,nginx] [--profile auto|always|never]

All in front of one fast local responder (bench/responder.py): direct, the baseline of every "added"
figure; the gateway (gunicorn, 2 uvicorn workers, GATEWAY_ONLY=True, auth, Redis limits too high to refuse,
metering; a `<name>_bench` database); LiteLLM's proxy (~=1.110, no database, 2 workers, its own venv under
.data/bench, installed on first use); nginx, if installed. Each cell warms up, then sends --requests
requests or runs --seconds, whichever ends first, from aiohttp in this process; wrk, when installed, measures
non-streaming throughput again (a C client: where it is higher, Python was the limit). --profile auto runs
py-spy on the gateway when its p50 added misses 1 ms. Everything started is stopped, Ctrl-C included.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import importlib.util
import io
import json
import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlparse, urlunparse

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.common import run_with_services  # noqa: E402 (after the path is set)

DATA = ROOT / ".data" / "bench"
BENCH_REDIS_DB = 9  # the tests use 8; only the gateway's gw:* keys are deleted, before and after
MODEL, LITELLM_KEY = "bench-chat", "sk-bench-master"
LITELLM = ["litellm[proxy]~=1.110.0"]
# The proxy extra pins litellm-proxy, -proxy-extras and -enterprise to builds an index may lack; then the
# SDK (it holds the proxy's code) and the extra's other packages.
LITELLM_FALLBACK = ["litellm~=1.110.0", "litellm-proxy-extras", "litellm-enterprise", "fastapi", "starlette",
                    "uvicorn", "uvloop", "gunicorn", "granian", "backoff", "rq", "orjson", "hiredis",
                    "apscheduler", "fastapi-sso", "pyjwt", "python-multipart", "cryptography", "pynacl",
                    "websockets", "azure-identity", "azure-storage-blob", "mcp", "httpx2", "restrictedpython",
                    "rich", "inquirerpy", "tomlkit", "polars", "soundfile", "pyroscope-io", "expression",
                    "backports-zstd", "semver"]  # fmt: skip
NGINX_CONF = """worker_processes 2; pid {dir}/nginx.pid; error_log {dir}/error.log warn;
events {{ worker_connections 4096; }}
http {{ access_log off; client_body_temp_path {dir}/body; proxy_temp_path {dir}/proxy;
  fastcgi_temp_path {dir}/fastcgi; uwsgi_temp_path {dir}/uwsgi; scgi_temp_path {dir}/scgi;
  upstream responder {{ server {upstream}; keepalive 256; }}
  server {{ listen 127.0.0.1:{port};
    location / {{ proxy_pass http://responder; proxy_http_version 1.1; proxy_set_header Connection "";
                 proxy_buffering off; }} }} }}
"""
# Where the gateway's event loop spends its time, as inclusive shares of its samples (they may nest).
COMPONENTS = {
    "upstream call (httpx)": "AsyncClient.send (", "limits (Redis)": "RateLimiter.admit (",
    "metering (Redis, Prometheus)": "finish (serving/gateway/pipeline", "auth": "Directory.caller (",
    "thread hops (sync_to_async)": "SyncToAsync.__call__ (", "thread starts": "Thread.start (",
    "HTTP server (uvicorn)": "(uvicorn/protocols/", "logging": "Logger._log (",
}  # fmt: skip
TICKS = os.sysconf("SC_CLK_TCK")
GUNICORN = (
    "-m gunicorn marketplace.asgi:application --worker-class marketplace.server.UvicornWorker --workers 2"
)


class Processes:
    """What the benchmark started, each in its own process group; `stop_all` ends them, newest first."""

    def __init__(self, logs: Path) -> None:
        self.logs = logs
        self.running: list[subprocess.Popen[bytes]] = []

    def start(self, name: str, command: list[str], **options: Any) -> subprocess.Popen[bytes]:
        with (self.logs / f"{name}.log").open("wb") as log:
            process = subprocess.Popen(command, stdout=log, stderr=log, start_new_session=True, **options)
        self.running.append(process)
        return process

    def stop(self, process: subprocess.Popen[bytes]) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(timeout=15)
        with contextlib.suppress(ProcessLookupError):  # workers that outlived their parent, if any
            os.killpg(process.pid, signal.SIGKILL)
        process.wait()
        self.running.remove(process)

    def stop_all(self) -> None:
        for process in reversed(list(self.running)):
            self.stop(process)

    def wait_ready(self, url: str, process: subprocess.Popen[bytes], name: str, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and process.poll() is None:
            with contextlib.suppress(OSError), urllib.request.urlopen(url, timeout=2):  # noqa: S310 - loopback
                return
            time.sleep(0.3)
        raise RuntimeError(f"{name} did not answer {url}:\n{(self.logs / f'{name}.log').read_text()[-3000:]}")


@dataclass
class Target:
    url: str
    headers: dict[str, str]
    root: int | None  # the proxy's parent process; its children are the workers (None: direct)


@dataclass
class Cell:
    latencies: list[float]  # ms, successful requests only
    firsts: list[float]  # ms to the first bytes of a streamed body
    errors: Counter[str]  # by HTTP status, exception, or "incomplete"
    rps: float
    cpu: dict[str, float]  # per cent of one core while the measured requests ran
    wrk: tuple[float, int] | None = None  # wrk's requests per second and errors


Cells = dict[tuple[str, bool, int], Cell]


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(fraction * (len(ordered) - 1)))]


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def proc(pid: int, name: str) -> str:
    return Path(f"/proc/{pid}/{name}").read_text()


def workers(root: int) -> list[int]:
    """The root's children that serve requests (not multiprocessing's resource tracker)."""
    found = []
    for entry in Path("/proc").iterdir():
        with contextlib.suppress(OSError, ValueError):
            parent = int(proc(int(entry.name), "stat").rsplit(")", 1)[1].split()[1])
            if parent == root and "resource_tracker" not in proc(int(entry.name), "cmdline"):
                found.append(int(entry.name))
    return sorted(found)


def rss_mb(pid: int) -> float:
    return int(re.search(r"VmRSS:\s+(\d+)", proc(pid, "status")).group(1)) / 1024  # type: ignore[union-attr]


def cpu_seconds(pids: list[int]) -> float:
    total = 0
    for pid in pids:
        with contextlib.suppress(OSError):  # a worker that died is reported by its errors, not here
            fields = proc(pid, "stat").rsplit(")", 1)[1].split()
            total += int(fields[11]) + int(fields[12])  # utime + stime
    return total / TICKS


def tool_venv(name: str, *requirements: list[str]) -> Path:
    """bin/ of .data/bench/<name>, created once with the first requirement list pip can install."""
    venv = DATA / name
    if not (venv / "installed.txt").exists():
        shutil.rmtree(venv, ignore_errors=True)
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
        for wanted in requirements:
            print(f"  installing {wanted[0]} into {venv} (once) ...", flush=True)
            pip = subprocess.run([venv / "bin" / "pip", "install", "-q", *wanted], capture_output=True)
            if pip.returncode == 0:
                (venv / "installed.txt").write_text(" ".join(wanted))
                break
            reason = (re.findall(r"^ERROR.*", pip.stderr.decode(), re.MULTILINE) or ["?"])[0]
            print(f"  pip could not: {reason}", flush=True)
        else:
            raise RuntimeError(f"could not install {requirements[0][0]} into {venv}")
    return venv / "bin"


async def drive(url: str, headers: dict[str, str], body: bytes, concurrency: int, count: int, seconds: float,
                stream: bool, cpu: Callable[[], dict[str, float]]) -> Cell:  # fmt: skip
    """Warm up (every connection opened), then `count` requests or `seconds`, `concurrency` at a time."""
    import aiohttp

    latencies: list[float] = []
    firsts: list[float] = []
    errors = Counter[str]()

    async def one(session: aiohttp.ClientSession) -> None:
        begin, first, data, status = time.perf_counter(), 0.0, b"", ""
        try:
            async with session.post(url, data=body, headers=headers) as response:
                async for piece in response.content.iter_any():
                    first, data = first or time.perf_counter(), data + piece
                status = str(response.status)
        except (aiohttp.ClientError, TimeoutError) as error:
            status = type(error).__name__
        if status != "200" or not (data.rstrip().endswith(b"[DONE]") if stream else b'"choices"' in data):
            errors[status if status != "200" else "incomplete"] += 1
            return
        latencies.append((time.perf_counter() - begin) * 1000)
        if stream:
            firsts.append((first - begin) * 1000)

    async def load(session: aiohttp.ClientSession, total: int, until: float) -> None:
        left = [total]  # shared by the `concurrency` clients

        async def client() -> None:
            while left[0] > 0 and time.perf_counter() < until:
                left[0] -= 1
                await one(session)

        await asyncio.gather(*(client() for _ in range(concurrency)))

    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=60)) as session:
        await load(session, max(2 * concurrency, 50), time.perf_counter() + seconds)
        latencies.clear(), firsts.clear()
        errors.clear()
        before, started = cpu(), time.perf_counter()
        await load(session, count, started + seconds)
        wall, after = time.perf_counter() - started, cpu()
    used = {name: (after[name] - before[name]) / wall * 100 for name in before}
    return Cell(latencies, firsts, errors, len(latencies) / wall, used)


def measure(target: Target, stream: bool, concurrency: int, requests: int, seconds: int, engine: int,
            folder: Path, *, use_wrk: bool = True) -> Cell:  # fmt: skip
    message = {"role": "user", "content": "Say hello to the benchmark."}
    body = json.dumps({"model": MODEL, "messages": [message], "max_tokens": 16, "stream": stream}).encode()
    url, headers = f"{target.url}/v1/chat/completions", {**target.headers, "Content-Type": "application/json"}
    proxy = workers(target.root) if target.root else []
    groups = {"proxy": proxy, "client": [os.getpid()], "engine": [engine]}

    def cpu() -> dict[str, float]:
        return {name: cpu_seconds(pids) for name, pids in groups.items()}

    cell = asyncio.run(drive(url, headers, body, concurrency, requests, seconds, stream, cpu))
    if use_wrk and not stream and shutil.which("wrk"):
        script = [f"wrk.method, wrk.body = 'POST', {json.dumps(body.decode())}"]
        lua = folder / "wrk.lua"
        lua.write_text("\n".join(script + [f'wrk.headers["{k}"] = "{v}"' for k, v in headers.items()]))
        command = ["wrk", "-t1", f"-c{concurrency}", f"-d{min(5, seconds)}s", "-s", str(lua), url]
        out = subprocess.run(command, capture_output=True, text=True, timeout=60).stdout
        errors = re.findall(r"(?:Non-2xx or 3xx responses:|connect|read|write|timeout) (\d+)", out)
        rps = re.search(r"Requests/sec:\s+([\d.]+)", out)
        cell.wrk = (float(rps.group(1)) if rps else 0.0), sum(map(int, errors))
    return cell


# The systems: context managers that yield a Target (None: skipped) and stop what they started.


@contextlib.contextmanager
def serve(procs: Processes, name: str, command: list[str], ready: str, target: Target,
          **options: Any) -> Iterator[Target | None]:  # fmt: skip
    """Start `command`, wait until `ready` answers, yield the target with its root process; then stop."""
    process = procs.start(name, command, **options)
    try:
        procs.wait_ready(ready, process, name, 180)
        yield Target(target.url, target.headers, process.pid)
    finally:
        procs.stop(process)


def prepare_gateway(upstream: str) -> str:
    """Migrate; an organisation with limits too high to refuse, an API key and a READY deployment whose one
    replica is the responder, as tests/serving/gateway/conftest.py makes them. Returns the key's secret."""
    import django

    django.setup()
    from django.contrib.auth.models import User
    from django.core.management import call_command
    from django.db import connections

    from marketplace.accounts import services as account_services
    from marketplace.accounts.models import Quota
    from marketplace.catalog.models import InstanceType, ModelCard
    from marketplace.subscriptions.services import subscribe
    from serving.choices import Backend, DeploymentStatus
    from serving.models import Deployment

    call_command("migrate", verbosity=0)
    call_command("load_catalog", verbosity=0, stdout=io.StringIO())
    owner = User.objects.create_user("bench")
    organization = account_services.create_organization(slug="bench", name="Bench", owner=owner)
    Quota.objects.filter(organization=organization).update(
        requests_per_minute=2_000_000_000, tokens_per_minute=10**15, monthly_token_budget=10**15
    )
    _, secret = account_services.create_api_key(organization=organization, name="bench", created_by=owner,
                                                expires_at=None)  # fmt: skip
    card = ModelCard.objects.get(slug="smollm2-135m-instruct")
    subscribe(organization=organization, card=card, license_sha256=None, user=owner)  # served only then
    Deployment.objects.create(
        organization=organization, name=MODEL, model_card=card,
        instance_type=InstanceType.objects.get(slug="local-cpu"), backend=Backend.LOCAL,
        status=DeploymentStatus.READY, status_message="Ready.", ready_replicas=1, desired_replicas=1,
        endpoints=[upstream],
    )  # fmt: skip
    connections.close_all()
    return secret


def gateway(procs: Processes, upstream: str) -> contextlib.AbstractContextManager[Target | None]:
    secret, url = prepare_gateway(upstream), f"127.0.0.1:{free_port()}"
    command = [sys.executable, *GUNICORN.split(), "--bind", url]
    target = Target(f"http://{url}", {"Authorization": f"Bearer {secret}"}, None)
    environment = {**os.environ, "GATEWAY_ONLY": "True"}
    return serve(procs, "gateway", command, f"http://{url}/healthz", target, cwd=ROOT, env=environment)


def litellm(procs: Processes, upstream: str) -> contextlib.AbstractContextManager[Target | None]:
    bin_dir, port, config = tool_venv("litellm-venv", LITELLM, LITELLM_FALLBACK), free_port(), {
        "model_list": [{"model_name": MODEL, "litellm_params": {
            "model": f"openai/{MODEL}", "api_base": f"{upstream}/v1", "api_key": "sk-responder"}}],
        "general_settings": {"master_key": LITELLM_KEY}, "litellm_settings": {"telemetry": False},
    }  # fmt: skip
    versions = sorted(bin_dir.parent.glob("lib/python*/site-packages/litellm-[0-9]*.dist-info"))
    print(f"  litellm: {versions[-1].name.removesuffix('.dist-info') if versions else '?'}", flush=True)
    (procs.logs / "litellm.yaml").write_text(json.dumps(config))  # YAML is a superset of JSON
    environment = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "REDIS_URL")}
    environment |= {"LITELLM_LOCAL_MODEL_COST_MAP": "True", "LITELLM_LOG": "ERROR"}  # no network, quiet
    command = [str(bin_dir / "litellm"), "--config", str(procs.logs / "litellm.yaml"), "--host", "127.0.0.1",
               "--port", str(port), "--num_workers", "2"]  # fmt: skip
    target = Target(f"http://127.0.0.1:{port}", {"Authorization": f"Bearer {LITELLM_KEY}"}, None)
    ready = f"{target.url}/health/liveliness"
    return serve(procs, "litellm", command, ready, target, cwd=procs.logs, env=environment)


def nginx(procs: Processes, upstream: str) -> contextlib.AbstractContextManager[Target | None]:
    binary = shutil.which("nginx") or shutil.which("nginx", path="/usr/sbin")
    if binary is None:
        print("  nginx: skipped, not installed (Debian: apt-get install -y nginx)", flush=True)
        return contextlib.nullcontext()
    prefix, port = procs.logs / "nginx", free_port()
    prefix.mkdir()
    conf = NGINX_CONF.format(dir=prefix, upstream=urlparse(upstream).netloc, port=port)
    (prefix / "nginx.conf").write_text(conf)
    command = [binary, "-p", str(prefix), "-e", str(prefix / "error.log"), "-c", str(prefix / "nginx.conf"),
               "-g", "daemon off;"]  # fmt: skip
    target = Target(f"http://127.0.0.1:{port}", {}, None)
    return serve(procs, "nginx", command, f"{target.url}/health", target)


def direct(procs: Processes, upstream: str) -> contextlib.AbstractContextManager[Target | None]:
    return contextlib.nullcontext(Target(upstream, {}, None))


SYSTEMS = {"direct": direct, "gateway": gateway, "litellm": litellm, "nginx": nginx}


def profile(target: Target, engine: int, procs: Processes) -> list[str]:
    """py-spy samples of the gateway workers' event-loop threads under plain load at concurrency 64."""
    assert target.root is not None
    output, seconds = procs.logs / "profile.txt", 8
    spy = tool_venv("py-spy-venv", ["py-spy"]) / "py-spy"
    options = f"--pid {target.root} --subprocesses --threads --idle --format raw --duration {seconds}".split()
    sampler = procs.start("py-spy", [str(spy), "record", *options, "--output", str(output)])
    time.sleep(1)  # attached
    measure(target, False, 64, 10**6, seconds - 1, engine, procs.logs, use_wrk=False)
    with contextlib.suppress(subprocess.TimeoutExpired):
        sampler.wait(timeout=60)
    procs.stop(sampler)
    if not output.exists():
        return [f"  py-spy failed: {(procs.logs / 'py-spy.log').read_text().strip()[-300:]}"]
    total, idle, packages, inclusive = 0, 0, Counter[str](), Counter[str]()
    for line in output.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        frames = [frame for frame in stack.split(";") if not frame.startswith("process ")]
        if "MainThread" not in frames[0] or f"({target.root})" in frames[0]:
            continue  # the workers' event loops only; the threads they start show up in them as waits
        total += int(count)
        if frames[-1].startswith(("EpollSelector.select (", "select (selectors")):
            idle += int(count)
            continue
        found = re.search(r"\((?:.*(?:site-packages|python3\.\d+)/)?([^/:<]+)", frames[-1])
        packages[found.group(1).removesuffix(".py") if found else "?"] += int(count)
        for name, marker in COMPONENTS.items():
            inclusive[name] += int(count) * any(marker in frame for frame in frames)
    total = max(total, 1)
    return [
        f"py-spy, {seconds} s at concurrency 64 (plain), the workers' event-loop threads: "
        f"{idle / total:.0%} idle in epoll",
        "  self time by package: " + ", ".join(f"{k} {v / total:.0%}" for k, v in packages.most_common(10)),
        "  inclusive: " + ", ".join(f"{k} {v / total:.0%}" for k, v in inclusive.most_common()),
    ]


def p50_added(cells: Cells, system: str, stream: bool, c: int, what: str = "latencies") -> float | None:
    """The system's median (of latencies, or of `firsts`) minus direct's at the same mode and concurrency."""
    cell, base = cells.get((system, stream, c)), cells.get(("direct", stream, c))
    if not cell or not base or not getattr(cell, what) or not getattr(base, what):
        return None
    return statistics.median(getattr(cell, what)) - statistics.median(getattr(base, what))


def row(name: str, stream: bool, c: int, cells: Cells) -> str:
    cell, base = cells[name, stream, c], cells.get(("direct", stream, c))
    p50, p99 = statistics.median(cell.latencies or [0]), percentile(cell.latencies or [0], 0.99)
    added_p99 = (
        p99 - percentile(base.latencies, 0.99) if base and base.latencies and name != "direct" else None
    )
    ttfb = f"{statistics.median(cell.firsts):.2f}" if cell.firsts else "—"
    plus = [p50_added(cells, name, stream, c), added_p99, p50_added(cells, name, stream, c, "firsts")]
    p50_plus, p99_plus, ttfb_plus = ("—" if v is None or name == "direct" else f"{v:+.2f}" for v in plus)
    wrk_rps = "—" if not cell.wrk else f"{cell.wrk[0]:.0f}" + (f" {cell.wrk[1]}e" if cell.wrk[1] else "")
    cpu = "/".join(f"{cell.cpu[k]:.0f}" for k in ("proxy", "client", "engine"))
    mode = "stream" if stream else "plain"
    errors = sum(cell.errors.values())
    figures = f"{p50:>7.2f} {p99:>7.2f} {p50_plus:>7} {p99_plus:>7} {cell.rps:>6.0f} {wrk_rps:>7} {errors:>4}"
    return f"{name:<8} {mode:<6} {c:>4} {figures} {ttfb:>7} {ttfb_plus:>7} {cpu:>12}"


HEADER = (f"{'system':<8} {'mode':<6} {'conc':>4} {'p50':>7} {'p99':>7} {'+p50':>7} {'+p99':>7} {'rps':>6} "
          f"{'wrk rps':>7} {'errs':>4} {'ttfb':>7} {'+ttfb':>7} {'cpu% px/cl/en':>12}")  # fmt: skip


def goals(cells: Cells, rss: dict[str, list[float]], concurrencies: list[int]) -> list[str]:
    """One line per goal: met, MISSED or n/a (a system was not measured), and the figures judged."""
    modes = {"plain": False, "stream": True}
    judged: list[tuple[str, dict[str, float | None], Callable[[float], bool], str]] = []
    for c in concurrencies:
        ours = {m: p50_added(cells, "gateway", s, c) for m, s in modes.items()}
        theirs = {m: p50_added(cells, "litellm", s, c) for m, s in modes.items()}
        ratios = {m: ours[m] / theirs[m] if ours[m] is not None and theirs[m] else None for m in modes}  # type: ignore[operator]
        judged.append((f"p50 added ≤ 1 ms, c={c}", ours, lambda v: v <= 1, "{:.2f} ms"))
        judged.append((f"p50 added ≤ 0.25× LiteLLM's, c={c}", ratios, lambda v: v <= 0.25, "{:.2f}×"))
    ours_rps = {m: cells[("gateway", s, 64)].rps for m, s in modes.items() if ("gateway", s, 64) in cells}
    theirs_rps = {m: cells[("litellm", s, 64)].rps for m, s in modes.items() if ("litellm", s, 64) in cells}
    rps = {m: ours_rps[m] / theirs_rps[m] if m in ours_rps and theirs_rps.get(m) else None for m in modes}
    judged.append(("requests/s at c=64 ≥ 4× LiteLLM's", rps, lambda v: v >= 4, "{:.2f}×"))
    ttft = {f"c={c}": p50_added(cells, "gateway", True, c, "firsts") for c in concurrencies}
    judged.append(("streaming TTFT added ≤ 1 ms", ttft, lambda v: v <= 1, "{:.2f} ms"))
    judged.append(("gateway worker RSS ≤ 120 MB", {"max": max(rss.get("gateway") or [0]) or None},
                   lambda v: v <= 120, "{:.0f} MB"))  # fmt: skip
    lines = []
    for goal, figures, test, unit in judged:
        known = [v for v in figures.values() if v is not None]
        verdict = "n/a   " if not known else "met   " if all(map(test, known)) else "MISSED"
        shown = ", ".join(f"{k} {'n/a' if v is None else unit.format(v)}" for k, v in figures.items())
        lines.append(f"{verdict} {goal:<36} {shown}")
    return lines


def run(args: argparse.Namespace, procs: Processes) -> None:
    port = free_port()
    engine = procs.start("responder", [sys.executable, str(ROOT / "bench" / "responder.py"), str(port)])
    upstream = f"http://127.0.0.1:{port}"
    procs.wait_ready(f"{upstream}/health", engine, "responder", 10)
    fast = " and ".join(n for n in ("uvloop", "httptools") if importlib.util.find_spec(n)) or "asyncio, h11"
    print(f"{os.cpu_count()} cores shared by the client (aiohttp, this process"
          f"{'; wrk -t1 for the wrk column' if shutil.which('wrk') else ''}), the proxy and the responder; "
          f"the gateway's uvicorn runs on {fast}.\nPer cell: warm-up, then {args.requests} requests or "
          f"{args.seconds} s. Times in ms; +x: added over direct at the same mode and concurrency; ttfb: "
          "first body bytes; cpu%: of one core, proxy workers/client/responder.\n")  # fmt: skip
    print(HEADER, flush=True)
    cells: Cells = {}
    rss: dict[str, list[float]] = {}
    notes = []
    for name in args.systems:
        with SYSTEMS[name](procs, upstream) as target:
            if target is None:
                continue
            for stream in (False, True):
                for c in args.concurrency:
                    cell = measure(target, stream, c, args.requests, args.seconds, engine.pid, procs.logs)
                    cells[name, stream, c] = cell
                    if cell.errors:
                        notes.append(
                            f"errors {name} {'stream' if stream else 'plain'} c={c}: {dict(cell.errors)}"
                        )
                    print(row(name, stream, c, cells), flush=True)
            if target.root:
                rss[name] = [rss_mb(pid) for pid in workers(target.root)]
                notes.append(f"RSS {name:<8} workers {', '.join(f'{m:.0f}' for m in rss[name])} MB "
                             f"(parent {rss_mb(target.root):.0f} MB)")  # fmt: skip
            slow = any((p50_added(cells, name, s, min(args.concurrency)) or 0) > 1 for s in (False, True))
            if name == "gateway" and (args.profile == "always" or (args.profile == "auto" and slow)):
                notes += profile(target, engine.pid, procs)
    print("", *notes, "", "goals (gateway):", *goals(cells, rss, args.concurrency), sep="\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--seconds", type=int, default=10)
    parser.add_argument("--concurrency", type=lambda s: [int(c) for c in s.split(",")], default=[1, 64, 256])
    parser.add_argument("--systems", type=lambda s: s.split(","), default=list(SYSTEMS))
    parser.add_argument("--profile", choices=("auto", "always", "never"), default="auto")
    args = parser.parse_args()
    args.systems = ["direct"] + [s for s in args.systems if s != "direct"]  # the baseline comes first
    signal.signal(signal.SIGTERM, signal.default_int_handler)  # SIGTERM stops everything, as Ctrl-C does
    run_with_services(lambda: run_in_bench_services(args))


def run_in_bench_services(args: argparse.Namespace) -> None:
    """Inside run_with_services (the bench database is set): the gateway's own Redis db, then the run."""
    import redis

    os.environ["REDIS_URL"] = urlunparse(
        urlparse(os.environ["REDIS_URL"])._replace(path=f"/{BENCH_REDIS_DB}")
    )
    with tempfile.TemporaryDirectory(prefix="bench-gateway-") as folder:
        procs = Processes(Path(folder))
        try:
            run(args, procs)
        except KeyboardInterrupt:
            print("\ninterrupted: stopping everything this run started", flush=True)
        finally:
            procs.stop_all()
            store = redis.Redis.from_url(os.environ["REDIS_URL"])
            for key in list(store.scan_iter("gw:*")):  # counters and the usage queue nobody flushes here
                store.delete(key)


if __name__ == "__main__":
    main()
