"""The program of a training Job on a GPU instance type: `python3 -m learning.training.job` (trainer image).

Everything it needs comes from two presigned object-store URLs in its environment, so the pod holds no
store credentials and never talks to the platform:

1. GET TRAINING_INPUT_URL: a gzip-compressed JSON object {"base_model": a Hugging Face repository or a
   folder, "revision", "spec" (a TrainingSpec as a dict), "rows" ([{prompt, answer}]), "heldout"
   ([prompt]), "max_new_tokens"}.
2. A repository is downloaded into the Hugging Face cache (HF_HOME; HF_TOKEN for a gated one).
3. The trainer (cpu_trainer.py, in this process: it trains on the GPU when there is one) writes its
   progress lines to stdout, where the platform reads them from the pod's log. Its checkpoints live on
   the pod's work volume (TRAINING_WORK_DIR): a restarted container resumes from the last one.
4. The student (base + adapter) and the untrained base answer the held-out prompts (cpu_generate.py).
5. PUT TRAINING_OUTPUT_URL: a gzip tar of adapter/ and heldout.json ({"student", "base"}: each what
   cpu_generate.generate returns: the answers, their tokens, the seconds answering took). The last line
   is {"event": "uploaded"}.
Exit codes are the trainer's, so the Job's failure says why. Standard library only at the top.
"""

from __future__ import annotations

import gzip
import io
import json
import os
import sys
import tarfile
import time
import urllib.request
from pathlib import Path
from typing import Any

from learning.training import cpu_generate, cpu_trainer

TIMEOUT_SECONDS = 300
OUTPUT = "output.tar.gz"
HELDOUT = "heldout.json"


def say(event: str, **fields: Any) -> None:
    print(json.dumps({"event": event, "time": round(time.time(), 3), **fields}), flush=True)


def fetch_input(url: str) -> dict[str, Any]:
    with urllib.request.urlopen(url, timeout=TIMEOUT_SECONDS) as answer:  # noqa: S310 (a presigned http(s) URL)
        data = json.loads(gzip.decompress(answer.read()))
    if not isinstance(data, dict) or not isinstance(data.get("rows"), list):
        raise ValueError("The run's input is not an object with rows.")
    return data


def base_folder(data: dict[str, Any]) -> str:
    """The base model as a folder: a folder given as one, a repository downloaded into the cache."""
    base = str(data["base_model"])
    if Path(base, "config.json").is_file():
        return base
    from huggingface_hub import snapshot_download

    return str(snapshot_download(base, revision=data.get("revision") or None))


def pack(work: Path) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as archive:
        archive.add(work / "run" / cpu_trainer.ADAPTER, arcname=cpu_trainer.ADAPTER)
        archive.add(work / HELDOUT, arcname=HELDOUT)
    return buffer.getvalue()


def upload(url: str, data: bytes) -> None:
    # A content type of its own: urllib's default (a form) makes some servers parse the body as one.
    request = urllib.request.Request(  # noqa: S310 (a presigned http(s) URL)
        url, data=data, method="PUT", headers={"Content-Type": "application/gzip"}
    )
    with urllib.request.urlopen(request, timeout=TIMEOUT_SECONDS) as answer:  # noqa: S310
        answer.read()


def main() -> int:
    work = Path(os.environ.get("TRAINING_WORK_DIR", "/work"))
    try:
        data = fetch_input(os.environ["TRAINING_INPUT_URL"])
        output_url = os.environ["TRAINING_OUTPUT_URL"]
        base = base_folder(data)
    except (KeyError, OSError, ValueError) as error:
        say("failed", reason="bad_run", message=f"The training run's input cannot be read: {error}"[:2000])
        return cpu_trainer.EXIT_BAD_RUN
    run = work / "run"
    run.mkdir(parents=True, exist_ok=True)
    (work / "train.jsonl").write_text(
        "".join(json.dumps(row) + "\n" for row in data["rows"]), encoding="utf-8"
    )
    description = {
        "base_model": base,
        "data": str(work / "train.jsonl"),
        "output": str(run),
        "progress": "/dev/stdout",
        "spec": data["spec"],
    }
    (work / "run.json").write_text(json.dumps(description))
    if not (run / cpu_trainer.ADAPTER / "adapter_config.json").is_file():
        code = cpu_trainer.main([str(work / "run.json")])
        if code != cpu_trainer.EXIT_OK:
            return code
    if not (work / HELDOUT).is_file():
        say("evaluating", prompts=len(data["heldout"]))
        job = {"base_model": base, "prompts": data["heldout"], "max_new_tokens": data["max_new_tokens"]}
        student = cpu_generate.generate({**job, "adapter": str(run / cpu_trainer.ADAPTER)})
        untrained = cpu_generate.generate({**job, "adapter": None})
        answers = {"student": student, "base": untrained}
        (work / HELDOUT).write_text(json.dumps(answers), encoding="utf-8")
    try:
        upload(output_url, pack(work))
    except OSError as error:
        say("failed", reason="error", message=f"The adapter could not be uploaded: {error}"[:2000])
        return cpu_trainer.EXIT_ERROR
    say("uploaded")
    return cpu_trainer.EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
