"""How a tuning job's student did on the held-out part, against its teacher and its untrained base.

1. The truth of each held-out record: its reference answer when every record has one, else (distillation
   from data without references) the teacher's answer.
2. When every truth is a JSON object the task is structured: answers are scored with the task scorers
   (learning.training.task_scoring: JSON validity, per-field exact match, agreement with the teacher or
   reference), and a model's quality is its mean per-field accuracy. Otherwise an answer is right when it
   equals the truth (ends trimmed), and quality is the share right. Embedding similarity is not used: at
   135M it scores wrong answers as high as right ones.
3. The student's quality as a percentage of the teacher's, and the prompt tokens a call saves (the
   teacher's metered prompt against the student's, which carries no instructions).
The student's answers come from `answer_locally`: the base's weights with the adapter on CPU, in the
engine's environment (learning/training/cpu_generate.py), before the student is deployed anywhere.
Pure functions, apart from `answer_locally`.
"""

from __future__ import annotations

import json
import statistics
import subprocess
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, NamedTuple

from learning.training import cpu_generate
from learning.training.runner import _prepare_child
from learning.training.task_scoring import parse_object, score_answers
from serving.local import capacity, engine_env

GENERATE = Path(cpu_generate.__file__).resolve()


class Answered(NamedTuple):
    """A model's answers to prompts, with what answering them took (the student's cost is measured here)."""

    answers: list[str]
    prompt_tokens: list[int]
    completion_tokens: list[int]
    seconds: float  # answering, one prompt at a time, the weights already loaded


# (base folder, adapter folder or None, prompts, max new tokens, still wanted?) → the answers
AnswerLocally = Callable[[Path, Path | None, list[str], int, Callable[[], bool]], Answered]


class Stopped(Exception):
    """The job stopped being wanted (cancelled) while its student was answering."""


class GenerationFailed(Exception):
    def __init__(self, message: str, reason: str) -> None:
        super().__init__(message)
        self.reason = reason


def answer_locally(
    base: Path, adapter: Path | None, prompts: list[str], max_tokens: int, wanted: Callable[[], bool]
) -> Answered:
    """Answer `prompts` with the base (and adapter) in the engine's environment, on one core (the last, as
    the trainer's). `wanted` is asked every few seconds; when it says no the process is stopped (Stopped)."""
    folder = Path(tempfile.mkdtemp(prefix="student-answers-"))
    job = {"base_model": str(base), "adapter": str(adapter) if adapter else None, "prompts": prompts,
           "max_new_tokens": max_tokens, "output": str(folder / "answers.json")}  # fmt: skip
    (folder / "job.json").write_text(json.dumps(job))
    cores = capacity.allowed_cores()[-1:]
    directory = engine_env.engine_dir()
    environment = {
        **engine_env.engine_environment(directory, folder, cpus=capacity.cpu_list(cores)),
        "OMP_NUM_THREADS": str(len(cores)),
        "TOKENIZERS_PARALLELISM": "false",
    }
    with (folder / "generate.log").open("wb") as log:
        process = subprocess.Popen(
            [str(engine_env.engine_python(directory)), str(GENERATE), str(folder / "job.json")],
            env=environment, cwd=folder, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            start_new_session=True, preexec_fn=_prepare_child(tuple(cores), None),
        )  # fmt: skip
        while process.poll() is None:
            if not wanted():
                process.kill()
                process.wait()
                raise Stopped
            time.sleep(2)
    if process.returncode != cpu_generate.EXIT_OK:
        tail = (folder / "generate.log").read_text(errors="replace").strip().splitlines()[-1:] or [
            "no output"
        ]
        reason = "out_of_memory" if process.returncode == cpu_generate.EXIT_OUT_OF_MEMORY else "error"
        raise GenerationFailed(f"The student could not answer the held-out prompts: {tail[0][:500]}", reason)
    return answered(json.loads((folder / "answers.json").read_text()))


def answered(result: dict[str, Any]) -> Answered:
    """cpu_generate's output (or a training Job's held-out answers) as Answered."""
    return Answered(
        list(result["answers"]),
        list(result["prompt_tokens"]),
        list(result.get("completion_tokens") or []),
        float(result.get("seconds") or 0.0),
    )


def _fields(truths: Sequence[dict[str, Any]]) -> list[str]:
    seen: dict[str, None] = {}
    for truth in truths:
        seen.update(dict.fromkeys(truth))
    return list(seen)


def _mean(values: Sequence[float]) -> float | None:
    return round(statistics.fmean(values), 4) if values else None


def score(answers: Sequence[str], truths: Sequence[str], agree_with: Sequence[str]) -> dict[str, Any]:
    """One model's scores against the truths (and its agreement with `agree_with`, the teacher's answers
    or the references)."""
    objects = [parse_object(truth) for truth in truths]
    if all(value is not None for value in objects):
        parsed = [value for value in objects if value is not None]
        fields = _fields(parsed)
        scores = score_answers(answers, parsed, agree_with, fields)
        return {
            **scores.as_dict(),
            "fields": fields,
            "quality": _mean(list(scores.field_accuracy.values())) or 0.0,
        }
    right = [answer.strip() == truth.strip() for answer, truth in zip(answers, truths, strict=True)]
    agreed = [answer.strip() == other.strip() for answer, other in zip(answers, agree_with, strict=True)]
    return {
        "answers": len(answers),
        "exact_match": _mean([float(hit) for hit in right]),
        "agreement": _mean([float(hit) for hit in agreed]),
        "quality": _mean([float(hit) for hit in right]) or 0.0,
    }


def report(
    *,
    references: Sequence[str | None],
    teacher: Sequence[str] | None,
    student: Sequence[str],
    base: Sequence[str],
    teacher_prompt_tokens: Sequence[int] = (),
    student_prompt_tokens: Sequence[int] = (),
) -> dict[str, Any]:
    """The held-out report a job keeps (see the module's docstring)."""
    have_references = all(reference and reference.strip() for reference in references)
    if have_references:
        truths, truth = [str(reference) for reference in references], "reference"
    elif teacher is not None:
        truths, truth = list(teacher), "teacher"
    else:
        raise ValueError("Without references a student is scored against its teacher, and there is none.")
    agree_with = list(teacher) if teacher is not None else truths
    models = {"student": score(student, truths, agree_with), "base": score(base, truths, agree_with)}
    if teacher is not None:
        models["teacher"] = score(teacher, truths, agree_with)
    result: dict[str, Any] = {"records": len(student), "truth": truth, "models": models}
    teacher_quality = models.get("teacher", {}).get("quality")
    if teacher_quality:
        result["student_percent_of_teacher"] = round(100 * models["student"]["quality"] / teacher_quality, 1)
    if teacher_prompt_tokens and student_prompt_tokens:
        teacher_mean = statistics.fmean(teacher_prompt_tokens)
        student_mean = statistics.fmean(student_prompt_tokens)
        result["prompt_tokens"] = {
            "teacher_per_call": round(teacher_mean, 1),
            "student_per_call": round(student_mean, 1),
            "saved_per_call": round(teacher_mean - student_mean, 1),
        }
    return result


def _significant(value: float, digits: int = 6) -> float:
    """`value` to `digits` significant figures: costs a token run to millionths of a cent."""
    return float(f"{value:.{digits}g}")


def cost_side(
    *, instance: str, hourly_usd: float, busy_seconds: float, tokens: int, calls: int, estimate: bool
) -> dict[str, Any]:
    """What a model's tokens cost: its instance's hourly price over the time it was busy answering, per
    1,000 tokens and per call (its mean tokens a call, prompt included, so the prompt tokens a student
    saves show)."""
    per_1k = hourly_usd * busy_seconds / 3600 / tokens * 1000 if tokens and busy_seconds > 0 else None
    per_call = tokens / calls if calls else None
    return {
        "instance_type": instance,
        "hourly_usd": round(hourly_usd, 6),
        "busy_seconds": round(busy_seconds, 3),
        "tokens": tokens,
        "tokens_per_second": round(tokens / busy_seconds, 2) if busy_seconds > 0 else None,
        "tokens_per_call": round(per_call, 1) if per_call is not None else None,
        "usd_per_1k_tokens": _significant(per_1k) if per_1k is not None else None,
        "usd_per_call": _significant(per_1k * per_call / 1000) if per_1k is not None and per_call else None,
        "estimate": estimate,
    }


def cost_report(teacher: dict[str, Any] | None, student: dict[str, Any]) -> dict[str, Any]:
    """Teacher and student side by side, with the student's cost a call as a percentage of the teacher's
    (when both have a price) and its throughput as a multiple of the teacher's."""
    report: dict[str, Any] = {"student": student}
    if teacher is None:
        return report
    report["teacher"] = teacher
    if teacher["usd_per_call"] and student["usd_per_call"] is not None:
        report["student_percent_of_teacher_per_call"] = round(
            100 * student["usd_per_call"] / teacher["usd_per_call"], 1
        )
    if teacher["tokens_per_second"] and student["tokens_per_second"]:
        report["student_throughput_ratio"] = round(
            student["tokens_per_second"] / teacher["tokens_per_second"], 2
        )
    return report


def summary(evaluation: dict[str, Any]) -> str:
    """The report in one sentence, for the job's message and the custom model's summary."""
    models = evaluation.get("models") or {}
    if not models:
        return ""
    quality = {name: models[name]["quality"] for name in models}
    words = f"on {evaluation['records']} held-out records, the student scored {quality['student']:.0%}"
    if "teacher" in quality:
        words += f" against the teacher's {quality['teacher']:.0%}"
        if "student_percent_of_teacher" in evaluation:
            words += f" ({evaluation['student_percent_of_teacher']:g}% of the teacher)"
    words += f" and the untrained base's {quality['base']:.0%}"
    return words
