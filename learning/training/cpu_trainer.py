"""Train a LoRA adapter on CPU: the process a CPU tuning job runs, inside the engine's environment.

    <engine python> cpu_trainer.py RUN.json

RUN.json holds {"base_model": folder, "data": JSONL, "output": folder, "progress": file, "spec": {...}}
(`spec` is a checked TrainingSpec as a dict; runner.py writes it). The data is one {"prompt", "answer"} a
line. This file imports only the standard library at the top, so the platform can read its constants and
check data without torch; torch, transformers, peft and trl are imported where the work starts.

1. Check the data: every row an object with a non-empty "prompt" and "answer" string. A bad row stops the
   run before the model loads, naming the row.
2. Load the tokenizer, render every row with the base model's chat template (user: prompt, assistant:
   answer) and refuse a row longer than max_seq_length (truncating it would teach a cut-off answer).
3. Load the base model in float32 and train a PEFT LoRA adapter with TRL's SFTTrainer on a conversational
   prompt-completion dataset: the loss counts the answer's tokens only (completion-only loss), the prompt
   is context.
4. Every step appends a JSON line to the progress file (step, total steps, loss, tokens/s, elapsed, peak
   RSS); every `checkpoint_every` steps a checkpoint is written under output/checkpoints. A run started
   again on the same output resumes from its last checkpoint.
5. At the end the adapter (adapter_config.json + adapter_model.safetensors) is renamed into output/adapter
   whole, and the last progress line is {"event": "done", ...}.

SIGTERM cancels: the step in progress finishes, a checkpoint is written, and the process exits with
EXIT_CANCELLED. Every failure ends the progress file with {"event": "failed", "reason", "message"} and
exits with the code for its reason.
"""

from __future__ import annotations

import errno
import json
import os
import re
import resource
import shutil
import signal
import sys
import time
from pathlib import Path
from typing import Any

EXIT_OK = 0
EXIT_ERROR = 1  # anything unforeseen; the message carries the exception
EXIT_BAD_RUN = 3  # RUN.json, the base model folder or the output folder is unusable
EXIT_BAD_DATA = 4
EXIT_OUT_OF_MEMORY = 5
EXIT_CANCELLED = 6

CHECKPOINTS = "checkpoints"
ADAPTER = "adapter"
ADAPTER_FILES = ("adapter_config.json", "adapter_model.safetensors")
# What torch's CPU allocator says when malloc fails (it raises a plain RuntimeError there).
# torch's allocator ("can't allocate memory"), and ENOMEM where the weights are mapped ("unable to mmap …:
# Cannot allocate memory (12)"): which one a run meets depends on where its memory runs out.
_CPU_OUT_OF_MEMORY = re.compile(
    r"can't allocate memory|cannot allocate memory|not enough memory|out of memory", re.IGNORECASE
)


class BadData(ValueError):
    pass


class BadRun(ValueError):
    pass


class Progress:
    """The progress file: one JSON object a line, flushed as written, so a parent can tail it."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.handle = path.open("a", encoding="utf-8")
        self.started = time.monotonic()

    def write(self, event: str, **fields: Any) -> None:
        line = {"event": event, "time": round(time.time(), 3), **fields}
        self.handle.write(json.dumps(line) + "\n")
        self.handle.flush()


def peak_rss_bytes() -> int:
    """The largest resident set this process has had (Linux reports kilobytes)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def read_rows(path: Path) -> list[dict[str, str]]:
    """The rows of a JSONL training file, or BadData naming the first bad row (1-based; blank lines are
    skipped but counted, so the number is the line an editor shows)."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise BadData(f"The training data file {path.name} does not exist.") from None
    except UnicodeDecodeError as error:
        raise BadData(f"The training data is not UTF-8 text (byte {error.start}).") from None
    rows = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except ValueError as error:
            raise BadData(f"Row {number} is not JSON: {error}.") from None
        if not isinstance(row, dict):
            raise BadData(f"Row {number} is not an object with a prompt and an answer.")
        for field in ("prompt", "answer"):
            value = row.get(field)
            if field not in row:
                raise BadData(f"Row {number} has no '{field}' field.")
            if not isinstance(value, str) or not value.strip():
                raise BadData(f"Row {number}: '{field}' must be non-empty text, not {value!r:.40}.")
        rows.append({"prompt": row["prompt"], "answer": row["answer"]})
    if not rows:
        raise BadData("The training data has no rows: give at least one {prompt, answer} line.")
    return rows


def conversation(row: dict[str, str]) -> dict[str, list[dict[str, str]]]:
    """A row as TRL's conversational prompt-completion example."""
    return {
        "prompt": [{"role": "user", "content": row["prompt"]}],
        "completion": [{"role": "assistant", "content": row["answer"]}],
    }


def check_lengths(rows: list[dict[str, str]], tokenizer: Any, max_length: int) -> int:
    """The rows' total tokens with the chat template; BadData naming the first row over max_length."""
    total = 0
    for number, row in enumerate(rows, start=1):
        example = conversation(row)
        encoded = tokenizer.apply_chat_template(
            example["prompt"] + example["completion"], tokenize=True, return_dict=True
        )
        length = len(encoded["input_ids"])
        if length > max_length:
            raise BadData(
                f"Row {number} is {length} tokens long with the chat template; max_seq_length is "
                f"{max_length}. Shorten the row or raise max_seq_length."
            )
        total += length
    return total


def _read_run(path: Path) -> dict[str, Any]:
    try:
        run = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:
        raise BadRun(f"Cannot read the run description {path}: {error}") from None
    missing = [key for key in ("base_model", "data", "output", "progress", "spec") if key not in run]
    if missing:
        raise BadRun(f"The run description has no {missing[0]}.")
    if not (Path(run["base_model"]) / "config.json").is_file():
        raise BadRun(f"The base model folder {run['base_model']} has no config.json.")
    return dict(run)


def last_checkpoint(output: Path) -> Path | None:
    """The checkpoint with the highest step under output/checkpoints, if any was written whole (the
    trainer state is the last file a checkpoint gets)."""
    found = []
    for folder in (output / CHECKPOINTS).glob("checkpoint-*"):
        step = folder.name.rpartition("-")[2]
        if step.isdigit() and (folder / "trainer_state.json").is_file():
            found.append((int(step), folder))
    return max(found)[1] if found else None


class _Cancel:
    """SIGTERM sets the flag; the trainer's callback stops at the end of the step, after a checkpoint."""

    requested = False
    training = False

    @classmethod
    def install(cls, progress: Progress) -> None:
        def handler(signum: int, frame: Any) -> None:
            cls.requested = True
            if not cls.training:  # nothing to keep yet: stop now
                progress.write("cancelled", step=0, checkpoint=None, message="Cancelled before training.")
                os._exit(EXIT_CANCELLED)

        signal.signal(signal.SIGTERM, handler)


def train(run: dict[str, Any], progress: Progress) -> int:
    spec = run["spec"]
    output = Path(run["output"])
    rows = read_rows(Path(run["data"]))

    import torch
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
    from trl import SFTConfig, SFTTrainer

    torch.set_num_threads(len(os.sched_getaffinity(0)))  # the cores the parent pinned us to
    tokenizer = AutoTokenizer.from_pretrained(run["base_model"])
    tokens = check_lengths(rows, tokenizer, spec["max_seq_length"])
    model = AutoModelForCausalLM.from_pretrained(run["base_model"], dtype=torch.float32)

    checkpoints = output / CHECKPOINTS
    config = SFTConfig(
        output_dir=str(checkpoints),
        num_train_epochs=spec["epochs"],
        per_device_train_batch_size=spec["batch_size"],
        gradient_accumulation_steps=spec["gradient_accumulation"],
        learning_rate=spec["learning_rate"],
        lr_scheduler_type="linear",
        max_length=spec["max_seq_length"],
        completion_only_loss=True,
        # TRL turns it on by default to save GPU memory; a 135M student on CPU has memory to spare and
        # recomputing activations would cost a third more time.
        gradient_checkpointing=False,
        seed=spec["seed"],
        data_seed=spec["seed"],
        logging_strategy="steps",
        logging_steps=1,
        save_strategy="steps",
        save_steps=spec["checkpoint_every"],
        save_total_limit=2,
        include_num_input_tokens_seen="non_padding",
        use_cpu=not torch.cuda.is_available(),  # a training Job's GPU (job.py); else this machine's CPU
        bf16=False,
        report_to="none",
        disable_tqdm=True,
        dataloader_num_workers=0,
    )
    lora = LoraConfig(
        r=spec["rank"],
        lora_alpha=spec["alpha"],
        lora_dropout=spec["dropout"],
        target_modules=spec["target_modules"],
        bias="none",
        task_type="CAUSAL_LM",
    )
    resume = last_checkpoint(output)

    class Report(TrainerCallback):
        """Progress lines from the trainer's own hooks; the cancel flag turned into a checkpointed stop."""

        def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            self.began = time.monotonic()
            self.tokens_before = state.num_input_tokens_seen
            progress.write(
                "start",
                step=state.global_step,
                total_steps=state.max_steps,
                rows=len(rows),
                tokens=tokens,
                resumed_from=state.global_step if resume else None,
                trainable_parameters=sum(p.numel() for p in trainer.model.parameters() if p.requires_grad),
            )

        def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            if _Cancel.requested:
                control.should_save = True
                control.should_training_stop = True

        def on_log(self, args: Any, state: Any, control: Any, logs: Any = None, **kwargs: Any) -> None:
            if not logs or "loss" not in logs:
                return  # the closing summary (train_loss, train_runtime) goes in the "done" line
            elapsed = time.monotonic() - self.began
            seen = state.num_input_tokens_seen - self.tokens_before
            progress.write(
                "step",
                step=state.global_step,
                total_steps=state.max_steps,
                epoch=round(state.epoch or 0.0, 4),
                loss=round(float(logs["loss"]), 6),
                learning_rate=logs.get("learning_rate"),
                tokens_seen=state.num_input_tokens_seen,
                tokens_per_second=round(seen / elapsed, 1) if elapsed > 0 else None,
                elapsed=round(elapsed, 3),
                peak_rss_bytes=peak_rss_bytes(),
            )

        def on_save(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            folder = checkpoints / f"checkpoint-{state.global_step}"
            progress.write("checkpoint", step=state.global_step, path=str(folder))

    trainer = SFTTrainer(
        model=model,
        args=config,
        train_dataset=Dataset.from_list([conversation(row) for row in rows]),
        processing_class=tokenizer,
        peft_config=lora,
        callbacks=[Report()],
    )
    _Cancel.training = True
    result = trainer.train(resume_from_checkpoint=str(resume) if resume else None)
    step = trainer.state.global_step
    if _Cancel.requested:
        kept = last_checkpoint(output)
        progress.write(
            "cancelled",
            step=step,
            checkpoint=str(kept) if kept else None,
            message=f"Cancelled at step {step}; starting again resumes from the checkpoint.",
        )
        return EXIT_CANCELLED

    partial, adapter = output / f"{ADAPTER}.partial", output / ADAPTER
    shutil.rmtree(partial, ignore_errors=True)
    trainer.model.save_pretrained(str(partial))
    shutil.rmtree(adapter, ignore_errors=True)
    partial.rename(adapter)  # whole or nothing: a reader trusts adapter/ once it exists
    losses = [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]
    progress.write(
        "done",
        step=step,
        total_steps=trainer.state.max_steps,
        adapter=str(adapter),
        train_loss=round(float(result.training_loss), 6),
        first_loss=losses[0] if losses else None,
        last_loss=losses[-1] if losses else None,
        tokens_seen=trainer.state.num_input_tokens_seen,
        elapsed=round(time.monotonic() - progress.started, 3),
        peak_rss_bytes=peak_rss_bytes(),
    )
    return EXIT_OK


def _is_out_of_memory(error: BaseException) -> bool:
    if isinstance(error, MemoryError) or (isinstance(error, OSError) and error.errno == errno.ENOMEM):
        return True
    if type(error).__name__ == "OutOfMemoryError":  # torch's, without importing torch here
        return True
    return isinstance(error, RuntimeError) and bool(_CPU_OUT_OF_MEMORY.search(str(error)))


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print(__doc__, file=sys.stderr)
        return EXIT_BAD_RUN
    try:
        run = _read_run(Path(argv[0]))
    except BadRun as error:
        print(json.dumps({"event": "failed", "reason": "bad_run", "message": str(error)}), file=sys.stderr)
        return EXIT_BAD_RUN
    progress = Progress(Path(run["progress"]))
    _Cancel.install(progress)
    try:
        return train(run, progress)
    except BadData as error:
        progress.write("failed", reason="bad_data", message=str(error))
        return EXIT_BAD_DATA
    except BaseException as error:
        if isinstance(error, KeyboardInterrupt | SystemExit):
            raise
        if _is_out_of_memory(error):
            progress.write(
                "failed",
                reason="out_of_memory",
                message=(
                    f"Out of memory (the trainer had reached {peak_rss_bytes() / 1024**3:.1f} GB): lower "
                    "batch_size or max_seq_length, or give the run more memory."
                ),
            )
            return EXIT_OUT_OF_MEMORY
        progress.write("failed", reason="error", message=f"{type(error).__name__}: {error}"[:2000])
        raise


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
