"""The task teacher (learning.training.tickets) as a deployment's engine: OpenAI-compatible chat over real
HTTP that answers a support ticket (the last user message) with the JSON a large model given the
instructions would. Deterministic code, not a model, and the tests that use it say so. Its usage counts
words of every message as tokens, so a long system prompt costs what it would. `delay` seconds before each
answer lets a test catch a run in the middle; `fail` makes it answer 500."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

from learning import datasets
from learning.choices import DatasetSource
from learning.models import Dataset
from learning.storage import ObjectStore
from learning.training import tickets
from tests.standin_http import JsonHandler, serving


class TicketTeacher(JsonHandler):
    asked: list[list[dict[str, str]]] = []
    delay = 0.0
    fail = False
    lock = threading.Lock()

    def do_POST(self) -> None:
        payload = json.loads(self.rfile.read(int(self.headers["content-length"])))
        messages = payload["messages"]
        with TicketTeacher.lock:
            TicketTeacher.asked.append(messages)
        time.sleep(TicketTeacher.delay)
        if TicketTeacher.fail:
            self.send_json({"error": {"message": "The teacher is down."}}, status=500)
            return
        text = tickets.teacher_answer(messages[-1]["content"])
        prompt = sum(len(str(message["content"]).split()) for message in messages)
        self.send_json(
            {
                "id": "chatcmpl-1",
                "object": "chat.completion",
                "choices": [
                    {"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}
                ],
                "usage": {"prompt_tokens": prompt, "completion_tokens": 20, "total_tokens": prompt + 20},
            }
        )

    def do_GET(self) -> None:
        self.send_json({"status": "ok"})


@contextmanager
def ticket_teacher(delay: float = 0.0) -> Iterator[str]:
    """The teacher's URL while it serves; `TicketTeacher.asked` starts empty."""
    TicketTeacher.asked, TicketTeacher.delay, TicketTeacher.fail = [], delay, False
    with serving(TicketTeacher) as url:
        yield url


def ticket_dataset(
    store: ObjectStore,
    organization_id: int,
    count: int,
    heldout_fraction: float = 0.25,
    name: str = "tickets",
) -> Dataset:
    """Support tickets as a dataset: the ticket as the user's message, its true fields as the reference."""
    records = [
        {
            "messages": [{"role": "user", "content": tickets.student_prompt(ticket)}],
            "reference": json.dumps(ticket.truth),
            "metadata": {},
        }
        for ticket in tickets.make_tickets(count, seed=7)
    ]
    return datasets.save(
        store, organization_id=organization_id, name=name, records=records, source=DatasetSource.UPLOAD,
        heldout_fraction=heldout_fraction, seed=0,
    )  # fmt: skip
