"""Run the CPU trainer (cpu_trainer.py) as a child process, from a Celery task or a script.

No Django here: a run is a folder, and everything about it is in files there.
    run.json        what the trainer is told (base model, data, spec); written by start()
    progress.jsonl  the trainer's JSON lines (start, step, checkpoint, then done / failed / cancelled)
    trainer.log     its stdout and stderr (the traceback of an unforeseen failure)
    checkpoints/    resumable checkpoints; adapter/  the finished adapter

1. start() writes run.json and starts the engine environment's python on the run's own cores (affinity
   before exec, OpenMP threads to match, as serving/local/supervisor.py does for engines), killed with
   its parent so an orphaned trainer never holds cores (the task resumes it from the last checkpoint).
2. progress() returns the progress lines written since the last call (a half-written line waits).
3. cancel() sends SIGTERM (the trainer checkpoints at the end of its step and exits), then SIGKILL after
   a grace period; checkpoints are kept either way.
4. start() on a folder with checkpoints resumes from the last one: resume is starting again.
5. wait() returns an Outcome: a status and a sentence for a person, from the exit code and the last line.
"""

from __future__ import annotations

import ctypes
import json
import os
import resource
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from learning.training import cpu_trainer
from learning.training.spec import TrainingSpec
from serving.local import capacity, engine_env

TRAINER = Path(cpu_trainer.__file__).resolve()
SUCCEEDED, FAILED, CANCELLED = "succeeded", "failed", "cancelled"
_REASONS = {
    cpu_trainer.EXIT_BAD_DATA: "bad_data",
    cpu_trainer.EXIT_OUT_OF_MEMORY: "out_of_memory",
    cpu_trainer.EXIT_BAD_RUN: "bad_run",
}


@dataclass(frozen=True)
class Outcome:
    status: str  # succeeded | failed | cancelled
    message: str
    reason: str = ""  # why it failed: bad_data | out_of_memory | bad_run | killed | error
    adapter: Path | None = None
    step: int = 0
    checkpoint: Path | None = None


@dataclass
class CpuTraining:
    folder: Path
    base_model: Path
    data: Path
    spec: TrainingSpec = field(default_factory=TrainingSpec)
    cores: tuple[int, ...] = ()  # none given: one core, the last this process may use (see start())
    memory_limit_bytes: int | None = None  # address-space limit; past it the run fails as out of memory
    engine_dir: Path | None = None
    process: subprocess.Popen[bytes] | None = None
    _offset: int = 0
    _pending: bytes = b""
    _cancelled: bool = False
    _tmpdir: Path | None = None

    @property
    def progress_path(self) -> Path:
        return self.folder / "progress.jsonl"

    @property
    def adapter(self) -> Path:
        return self.folder / cpu_trainer.ADAPTER

    def last_checkpoint(self) -> Path | None:
        return cpu_trainer.last_checkpoint(self.folder)

    def command(self) -> list[str]:
        python = engine_env.engine_python(self.engine_dir or engine_env.engine_dir())
        return [str(python), str(TRAINER), str(self.folder / "run.json")]

    def start(self) -> None:
        """Start (or, when checkpoints exist, resume) the run. Not while it runs."""
        if self.running:
            raise RuntimeError("The run is already going.")
        self.folder.mkdir(parents=True, exist_ok=True)
        run = {
            "base_model": str(self.base_model.resolve()),
            "data": str(self.data.resolve()),
            "output": str(self.folder.resolve()),
            "progress": str(self.progress_path.resolve()),
            "spec": self.spec.to_dict(),
        }
        (self.folder / "run.json").write_text(json.dumps(run, indent=1))
        # One core unless told otherwise, as an engine replica gets (capacity.CORES_PER_REPLICA), and the
        # highest, as engines are placed from the lowest. Measured on a busy 2-core machine: a step with two
        # OpenMP threads took about twice as long as with one (each waits at every barrier for the other).
        cores = self.cores or capacity.allowed_cores()[-1:]
        engine = (self.engine_dir or engine_env.engine_dir()).resolve()
        self._tmpdir = Path(tempfile.mkdtemp(prefix="training-"))
        environment = {
            **engine_env.engine_environment(engine, self._tmpdir, cpus=capacity.cpu_list(cores)),
            "OMP_NUM_THREADS": str(len(cores)),
            "TOKENIZERS_PARALLELISM": "false",
        }
        self._cancelled = False
        with (self.folder / "trainer.log").open("ab") as log:
            self.process = subprocess.Popen(
                self.command(),
                env=environment,
                cwd=self.folder,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
                preexec_fn=_prepare_child(cores, self.memory_limit_bytes),
            )

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def progress(self) -> list[dict[str, Any]]:
        """The progress lines written since the last call, oldest first."""
        try:
            with self.progress_path.open("rb") as handle:
                handle.seek(self._offset)
                chunk = handle.read()
        except FileNotFoundError:
            return []
        self._offset += len(chunk)
        *lines, self._pending = (self._pending + chunk).split(b"\n")
        events = []
        for line in lines:
            try:
                events.append(json.loads(line))
            except ValueError:
                continue  # not the trainer's: the file is only ever appended whole lines
        return events

    def events(self) -> list[dict[str, Any]]:
        """Every progress line so far, of all the attempts (a resumed run appends to the same file)."""
        return read_events(self.progress_path)

    def stop(self) -> None:
        """Kill the trainer if it still runs (its worker is going away); the checkpoints stay."""
        if self.running and self.process is not None:
            self.process.kill()

    def cancel(self, grace: float = 60.0) -> Outcome:
        """Stop the run, keeping its checkpoints: SIGTERM, and SIGKILL after `grace` seconds. The lines
        it wrote meanwhile stay for progress() to return."""
        if self.process is None:
            raise RuntimeError("The run was not started.")
        self._cancelled = True
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(grace)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        return self._finished()

    def wait(
        self,
        timeout: float | None = None,
        on_progress: Callable[[dict[str, Any]], None] | None = None,
        poll: float = 0.5,
    ) -> Outcome:
        """Wait for the end (TimeoutError after `timeout` s), passing each progress line to `on_progress`."""
        if self.process is None:
            raise RuntimeError("The run was not started.")
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            finished = self.process.poll() is not None
            for event in self.progress():
                if on_progress:
                    on_progress(event)
            if finished:
                break
            if deadline is not None and time.monotonic() > deadline:
                raise TimeoutError(f"The training run is still going after {timeout} s.")
            time.sleep(poll)
        return self._finished()

    def _finished(self) -> Outcome:
        if self._tmpdir is not None:
            shutil.rmtree(self._tmpdir, ignore_errors=True)
            self._tmpdir = None
        return self.outcome()

    def outcome(self) -> Outcome:
        """What the finished process came to, in a sentence."""
        assert self.process is not None and self.process.returncode is not None
        code = self.process.returncode
        events = self.events()
        last = events[-1] if events else {}
        steps = [event["step"] for event in events if event.get("event") == "step"]
        step = steps[-1] if steps else 0
        checkpoint = self.last_checkpoint()
        if code == cpu_trainer.EXIT_OK and last.get("event") == "done":
            return Outcome(
                SUCCEEDED,
                f"Trained {last['step']} steps; the adapter is ready.",
                adapter=self.adapter,
                step=last["step"],
                checkpoint=checkpoint,
            )
        if code == cpu_trainer.EXIT_CANCELLED or (self._cancelled and code == -signal.SIGKILL):
            kept = f"resume continues from step {_step_of(checkpoint)}" if checkpoint else "nothing to resume"
            return Outcome(CANCELLED, f"Cancelled at step {step}; {kept}.", step=step, checkpoint=checkpoint)
        if code in _REASONS:
            message = last.get("message") if last.get("event") == "failed" else None
            return Outcome(
                FAILED, message or self._log_tail(), reason=_REASONS[code], step=step, checkpoint=checkpoint
            )
        if code == -signal.SIGKILL:
            return Outcome(
                FAILED,
                f"The trainer was killed at step {step} without a word, most likely by the system for "
                "running out of memory: lower batch_size or max_seq_length, or give the run more memory.",
                reason="out_of_memory",
                step=step,
                checkpoint=checkpoint,
            )
        message = last.get("message") if last.get("event") == "failed" else None
        return Outcome(
            FAILED,
            message or f"The trainer stopped with exit code {code}: {self._log_tail()}",
            reason="error",
            step=step,
            checkpoint=checkpoint,
        )

    def _log_tail(self) -> str:
        try:
            lines = (self.folder / "trainer.log").read_text(errors="replace").strip().splitlines()
        except FileNotFoundError:
            return "no output"
        return lines[-1][:500] if lines else "no output"


def read_events(path: Path) -> list[dict[str, Any]]:
    """The lines of a run's progress file, oldest first (none when there is no file yet)."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return []
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def _step_of(checkpoint: Path) -> str:
    return checkpoint.name.rpartition("-")[2]


def _prepare_child(cores: tuple[int, ...], memory_limit: int | None) -> Callable[[], None]:
    """What runs in the child before exec: die with the parent, keep to the run's cores, and stay under
    the memory limit (torch then fails an allocation, which the trainer reports as out of memory, instead
    of the kernel killing something)."""

    def prepare() -> None:
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
        os.sched_setaffinity(0, cores)
        if memory_limit is not None:
            resource.setrlimit(resource.RLIMIT_AS, (memory_limit, memory_limit))

    return prepare
