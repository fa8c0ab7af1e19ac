"""A stand-in engine for evaluation tests: OpenAI-compatible chat and embeddings over real HTTP, with
answers a test can predict, and a note of every prompt it was asked.

- Chat: a judge's request (the default rubric's wording) answers {"score": 7, "reason": "…"}; any other
  answers "Paris" when the last message mentions France, else "I do not know". `delay` seconds before
  each answer, to catch a run in the middle.
- Embeddings: a vector per input from its words' lengths (equal texts, equal vectors).
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

from tests.standin_http import JsonHandler, serving

JUDGE_VERDICT = '{"score": 7, "reason": "Correct and short."}'


class StandIn(JsonHandler):
    prompts: list[str] = []
    delay = 0.0
    lock = threading.Lock()

    def do_POST(self) -> None:
        payload = json.loads(self.rfile.read(int(self.headers["content-length"])))
        if self.path == "/v1/embeddings":
            texts = payload["input"] if isinstance(payload["input"], list) else [payload["input"]]
            vectors = [[float(len(w)) for w in [*t.split(), "", "", ""][:3]] for t in texts]
            self.send_json(
                {
                    "object": "list",
                    "data": [{"index": i, "embedding": v} for i, v in enumerate(vectors)],
                    "usage": {"prompt_tokens": 4, "total_tokens": 4},
                }
            )
            return
        prompt = payload["messages"][-1]["content"]
        with StandIn.lock:
            StandIn.prompts.append(prompt)
        time.sleep(StandIn.delay)
        if "Rate the assistant's answer" in prompt:
            text = JUDGE_VERDICT
        else:
            text = "Paris" if "France" in prompt else "I do not know"
        self.send_json(
            {
                "id": "chatcmpl-1",
                "object": "chat.completion",
                "choices": [
                    {"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}
                ],
                "usage": {"prompt_tokens": 10, "completion_tokens": 2, "total_tokens": 12},
            }
        )

    def do_GET(self) -> None:
        self.send_json({"status": "ok"})


@contextmanager
def stand_in_engine(delay: float = 0.0) -> Iterator[str]:
    """The stand-in's URL while it serves; `StandIn.prompts` starts empty."""
    StandIn.prompts = []
    StandIn.delay = delay
    with serving(StandIn) as url:
        yield url
