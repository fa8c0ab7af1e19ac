"""A tuning job's training run as a Job on a GPU instance type, behind a CPU run's interface
(learning.training.runner.CpuTraining), so learning.tuning_run drives both the same way.

1. start(): the run's input (the train rows, the spec, the held-out prompts, where the base's weights
   are) goes to the object store under the job's prefix; presigned URLs to read it and to write the
   output go into the Job's Secret; the Secret and the Job (learning.training.kube_job) are applied.
   Applying is idempotent, so a resumed worker re-attaches to the Job already running; when the output
   is in the store already, nothing is applied.
2. wait(): reads the Job every few seconds. The progress lines in its pod's log (learning.training.job
   prints the trainer's) are appended to the run folder's progress.jsonl, as a CPU run's are, and passed
   on; a pod that cannot start says why in a "waiting" line. When the Job completes, the output is
   fetched from the store and unpacked into the folder: adapter/ and heldout.json (the student's and the
   base's answers to the held-out prompts, made on the Job's GPU).
3. cancel(): deletes the Job and its Secret, which frees the GPUs. Its checkpoints lived on the pod's
   volume, so a later start trains from the beginning.
The reconciler (learning.tasks) deletes the Job of a tuning job that has finished or no longer exists.
"""

from __future__ import annotations

import gzip
import io
import json
import tarfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from django.conf import settings
from django.utils import timezone

from learning import datasets
from learning.choices import DatasetPart
from learning.models import TuningJob, TuningStatus
from learning.storage import get_store, presigned_url
from learning.training import cpu_trainer
from learning.training.job import HELDOUT
from learning.training.kube_job import TrainingJobSpec, build_training_objects
from learning.training.runner import CANCELLED, FAILED, SUCCEEDED, Outcome, read_events
from learning.training.spec import TrainingSpec
from learning.tuning import student_prompt
from serving.backends import get_backend
from serving.backends.base import PodState
from serving.backends.kubernetes import (
    TRAINING_FAILED,
    TRAINING_MISSING,
    TRAINING_SUCCEEDED,
    KubernetesBackend,
    cluster_settings,
)
from serving.services import instance_spec, model_spec, weights_path
from serving.status import UNSCHEDULABLE_GRACE_SECONDS

POLL_SECONDS = 5.0
URL_MARGIN_SECONDS = 3600  # the URLs outlive the Job's deadline by this much
_REASONS = {"bad_data", "out_of_memory", "bad_run"}


def heldout_prompts(job: TuningJob) -> list[str]:
    records = datasets.load_part(get_store(), job.dataset, DatasetPart.HELDOUT)
    return [str(student_prompt(record)) for record in records]


def store_prefix(job: TuningJob) -> str:
    return f"tuning-jobs/{job.organization_id}-{job.pk}"


def waiting_words(pod: PodState | None) -> str:
    """Why a training pod is not running yet, in a sentence, or "" when it is."""
    if pod is None:
        return "Waiting for the cluster to create the training pod."
    if pod.unschedulable_message:
        return (
            f"Waiting for a node of the instance type with free GPUs ({pod.unschedulable_message}); a "
            "cluster autoscaler may be adding one."
        )
    for container in pod.containers:
        if container.waiting_reason in ("ImagePullBackOff", "ErrImagePull", "InvalidImageName"):
            return (
                f"The trainer image cannot be pulled ({container.waiting_reason}): check TRAINING_IMAGE and "
                "the cluster's access to its registry."
            )
        if container.waiting_reason:
            return f"The training pod is starting ({container.waiting_reason})."
    return ""


def unschedulable_too_long(pod: PodState | None, job: TuningJob) -> str:
    """Why a training run is given up, when its pod has found no node for longer than a deployment's
    replica may (serving.status.UNSCHEDULABLE_GRACE_SECONDS), else "". A cluster autoscaler adding a node
    takes minutes; past that, the Job would only hold the quota until its deadline."""
    if pod is None or not pod.unschedulable_message or pod.unschedulable_since is None:
        return ""
    waited = (timezone.now() - pod.unschedulable_since).total_seconds()
    if waited <= UNSCHEDULABLE_GRACE_SECONDS:
        return ""
    where = job.instance_type.name if job.instance_type is not None else "its instance type"
    return (
        f"No node could take the training run on {where} for {waited / 60:.0f} minutes "
        f"({pod.unschedulable_message}). Free GPUs, add nodes of this instance type, or start the job again "
        "on another instance type."
    )


@dataclass
class KubernetesTraining:
    folder: Path
    job: TuningJob
    data: Path  # the train rows, one {prompt, answer} a line (as a CPU run reads them)
    backend: KubernetesBackend | None = None
    poll_seconds: float = POLL_SECONDS
    _seen: set[str] = field(default_factory=set, repr=False)
    _finished: bool = False
    _waiting: str = field(default="", repr=False)

    @property
    def adapter(self) -> Path:
        return self.folder / cpu_trainer.ADAPTER

    @property
    def progress_path(self) -> Path:
        return self.folder / "progress.jsonl"

    @property
    def running(self) -> bool:
        return not self._finished

    def _backend(self) -> KubernetesBackend:
        if self.backend is None:
            self.backend = _cluster()
        return self.backend

    def _keys(self) -> tuple[str, str]:
        prefix = store_prefix(self.job)
        return f"{prefix}/input.json.gz", f"{prefix}/output.tar.gz"

    def start(self) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        self._seen = {_identity(event) for event in self.events()}  # kept by an earlier worker
        store = get_store()
        input_key, output_key = self._keys()
        if _exists(store, output_key):
            return  # done before: wait() fetches it
        card = self.job.student_base
        data = {
            "base_model": weights_path(card) or card.huggingface_repo,
            "revision": "" if weights_path(card) else card.revision,
            "spec": TrainingSpec.from_dict(self.job.hyperparameters).to_dict(),
            "rows": [json.loads(line) for line in self.data.read_text(encoding="utf-8").splitlines() if line],
            "heldout": heldout_prompts(self.job),
            "max_new_tokens": self.job.max_tokens,
        }
        store.put(input_key, gzip.compress(json.dumps(data).encode(), mtime=0))
        expires = min(settings.TRAINING_DEADLINE_SECONDS + URL_MARGIN_SECONDS, 7 * 86_400)
        instance = self.job.instance_type
        assert instance is not None
        spec = TrainingJobSpec(
            job_id=self.job.pk,
            organization=self.job.organization.slug,
            name=self.job.name,
            instance=instance_spec(instance),
            model=model_spec(card),
            image=settings.TRAINING_IMAGE,
            input_url=presigned_url(store, input_key, write=False, expires_seconds=expires),
            output_url=presigned_url(store, output_key, write=True, expires_seconds=expires),
            deadline_seconds=settings.TRAINING_DEADLINE_SECONDS,
        )
        self._backend().apply_training(build_training_objects(spec, cluster_settings()))

    def events(self) -> list[dict[str, Any]]:
        """Every progress line kept from the Job's pod logs (as a CPU run's file holds them)."""
        return read_events(self.progress_path)

    def wait(
        self,
        timeout: float | None = None,
        on_progress: Callable[[dict[str, Any]], None] | None = None,
        poll: float | None = None,
    ) -> Outcome:
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            outcome = self._look(on_progress)
            if outcome is not None:
                self._finished = True
                return outcome
            if deadline is not None and time.monotonic() > deadline:
                raise TimeoutError(f"The training Job is still going after {timeout} s.")
            time.sleep(self.poll_seconds if poll is None else poll)

    def _look(self, on_progress: Callable[[dict[str, Any]], None] | None) -> Outcome | None:
        state = self._backend().training_state(self.job.pk)
        self._take_log(state.log, on_progress)
        if state.phase in (TRAINING_SUCCEEDED, TRAINING_MISSING):  # the store is read only once it ended
            store = get_store()
            _, output_key = self._keys()
            if _exists(store, output_key):
                return self._unpack(store.get(output_key))
        if state.phase == TRAINING_SUCCEEDED:
            return Outcome(
                FAILED,
                "The training Job finished but its output is not in the object store: check that the bucket "
                "keeps what the cluster writes (its lifecycle rules), then start a new job.",
                reason="bad_run",
            )
        if state.phase == TRAINING_FAILED:
            return self._failed(state.message)
        if state.phase == TRAINING_MISSING:
            return Outcome(
                FAILED,
                "The training Job is gone from the cluster and left no adapter (deleted by hand, or its "
                "namespace was cleaned); start a new job.",
                reason="error",
            )
        stuck = unschedulable_too_long(state.pod, self.job)
        if stuck:
            self._backend().delete_training(self.job.pk)  # its GPUs' quota is given back with the job
            return Outcome(FAILED, stuck, reason="error")
        words = waiting_words(state.pod)
        if words != self._waiting:
            self._waiting = words
            if words and on_progress:
                on_progress({"event": "waiting", "message": words})
        return None

    def _take_log(self, log: str, on_progress: Callable[[dict[str, Any]], None] | None) -> None:
        """Append the log's progress lines not kept yet: its newest lines are read on every look, and a
        restarted container's log starts over, so a line is known by its content (each has its time)."""
        fresh = []
        for line in log.splitlines():
            try:
                event = json.loads(line)
            except ValueError:
                continue  # a library's own output
            if isinstance(event, dict) and "event" in event and _identity(event) not in self._seen:
                self._seen.add(_identity(event))
                fresh.append(event)
        if not fresh:
            return
        with self.progress_path.open("a", encoding="utf-8") as handle:
            for event in fresh:
                handle.write(json.dumps(event) + "\n")
        for event in fresh:
            if on_progress:
                on_progress(event)

    def _unpack(self, data: bytes) -> Outcome:
        with tarfile.open(fileobj=io.BytesIO(data), mode="r:gz") as archive:
            archive.extractall(self.folder, filter="data")  # no links, nothing outside the folder
        if not (self.adapter / "adapter_config.json").is_file() or not (self.folder / HELDOUT).is_file():
            return Outcome(FAILED, "The training Job's output holds no adapter.", reason="bad_run")
        done = [event for event in self.events() if event.get("event") == "done"]
        if not done:  # the log was gone before it was read: the output is the proof
            with self.progress_path.open("a", encoding="utf-8") as handle:
                handle.write(json.dumps({"event": "done", "step": self.job.total_steps}) + "\n")
        step = int(done[-1].get("step", 0)) if done else self.job.total_steps
        return Outcome(
            SUCCEEDED, f"Trained {step} steps; the adapter is ready.", adapter=self.adapter, step=step
        )

    def _failed(self, condition: str) -> Outcome:
        failures = [event for event in self.events() if event.get("event") == "failed"]
        if failures:
            last = failures[-1]
            reason = str(last.get("reason") or "error")
            return Outcome(
                FAILED,
                str(last.get("message") or condition),
                reason=reason if reason in _REASONS else "error",
            )
        return Outcome(
            FAILED,
            f"The training Job failed: {condition}. Its pod's log says more (kubectl logs job/<name>).",
            reason="error",
        )

    def cancel(self, grace: float = 60.0) -> Outcome:
        self._backend().delete_training(self.job.pk)
        self._finished = True
        return Outcome(CANCELLED, "Cancelled; the training Job is deleted and its GPUs freed.")

    def stop(self) -> None:
        """Nothing: the Job runs on without this worker, and the next one re-attaches to it."""

    def answers(self) -> dict[str, Any]:
        """The held-out answers the Job made (heldout.json)."""
        return dict(json.loads((self.folder / HELDOUT).read_text(encoding="utf-8")))


def _cluster() -> KubernetesBackend:
    backend = get_backend("kubernetes")
    assert isinstance(backend, KubernetesBackend)
    return backend


def _identity(event: dict[str, Any]) -> str:
    return json.dumps(event, sort_keys=True)


def _exists(store: Any, key: str) -> bool:
    return key in store.list(key.rpartition("/")[0] + "/")


def delete_abandoned_runs(backend: KubernetesBackend | None = None) -> list[int]:
    """Delete the training Jobs of tuning jobs that failed, were cancelled or no longer exist: a worker
    that died, or a cancel while the Job ran, would otherwise leave its GPUs held. Returns their ids."""
    backend = backend or _cluster()
    running = backend.training_job_ids()
    wanted = set(
        TuningJob.objects.filter(pk__in=running)
        .exclude(status__in=(TuningStatus.FAILED, TuningStatus.CANCELLED))
        .values_list("pk", flat=True)
    )
    abandoned = sorted(running - wanted)
    for job_id in abandoned:
        backend.delete_training(job_id)
    return abandoned
