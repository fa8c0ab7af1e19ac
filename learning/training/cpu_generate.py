"""Answer prompts with a base model, and optionally a LoRA adapter on it, on CPU: how a tuning job hears
its student (and the untrained base) on the held-out part before the student is deployed anywhere.

    <engine python> cpu_generate.py JOB.json

JOB.json holds {"base_model": folder, "adapter": folder or null, "prompts": [str, ...],
"max_new_tokens": int, "output": file}. Each prompt is one user message, rendered with the base model's
chat template, and answered greedily (the same weights vLLM serves; greedy, so the figures repeat). The
output is one JSON object: {"answers": [str, ...], "prompt_tokens": [int, ...], "completion_tokens":
[int, ...], "seconds": float (answering, once the weights are loaded), "loading_seconds": float}. A
training Job (job.py) calls `generate` on its GPU.
Standard library at the top, like cpu_trainer.py: torch, transformers and peft load where the work
starts. Exit codes are cpu_trainer's (bad run, out of memory).
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path
from typing import Any

EXIT_OK, EXIT_ERROR, EXIT_BAD_RUN, EXIT_OUT_OF_MEMORY = 0, 1, 3, 5


def generate(job: dict[str, Any]) -> dict[str, Any]:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.set_num_threads(len(os.sched_getaffinity(0)))
    device = "cuda" if torch.cuda.is_available() else "cpu"  # a training Job's GPU; else this machine's CPU
    loading = time.monotonic()
    tokenizer = AutoTokenizer.from_pretrained(job["base_model"])
    model = AutoModelForCausalLM.from_pretrained(job["base_model"], dtype=torch.float32)
    if job.get("adapter"):
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, job["adapter"])
    model.to(device)
    model.eval()
    started = time.monotonic()  # what answering costs, without loading the weights
    answers, lengths, generated = [], [], []
    for prompt in job["prompts"]:
        encoded = tokenizer.apply_chat_template(
            [{"role": "user", "content": prompt}],
            add_generation_prompt=True,
            tokenize=True,
            return_dict=True,
            return_tensors="pt",
        )
        encoded = encoded.to(device)
        length = int(encoded["input_ids"].shape[1])
        with torch.no_grad():
            output = model.generate(
                **encoded,
                max_new_tokens=int(job["max_new_tokens"]),
                do_sample=False,
                pad_token_id=tokenizer.pad_token_id or tokenizer.eos_token_id,
            )
        answers.append(tokenizer.decode(output[0][length:], skip_special_tokens=True).strip())
        lengths.append(length)
        generated.append(int(output.shape[1]) - length)
    return {
        "answers": answers,
        "prompt_tokens": lengths,
        "completion_tokens": generated,
        "seconds": round(time.monotonic() - started, 3),
        "loading_seconds": round(started - loading, 3),
    }


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print(__doc__, file=sys.stderr)
        return EXIT_BAD_RUN
    try:
        job = json.loads(Path(argv[0]).read_text(encoding="utf-8"))
        output = Path(job["output"])
    except (OSError, ValueError, KeyError) as error:
        print(f"Cannot read the generation job {argv[0]}: {error}", file=sys.stderr)
        return EXIT_BAD_RUN
    try:
        result = generate(job)
    except MemoryError:
        print("Out of memory while answering.", file=sys.stderr)
        return EXIT_OUT_OF_MEMORY
    partial = output.with_suffix(".partial")
    partial.write_text(json.dumps(result), encoding="utf-8")
    partial.rename(output)  # whole or nothing
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
