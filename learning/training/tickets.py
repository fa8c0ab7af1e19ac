"""A stand-in task teacher: support tickets answered as JSON {category, priority, product}.

No model larger than 135M runs on this machine, so the distillation proof uses a teacher that answers a
structured task the way a large model given a long instruction would: correctly, in the exact JSON shape,
with nothing around it. It is deterministic code, and it says so wherever its answers are reported.

`make_tickets(count, seed)` writes realistic tickets whose true fields are known; `teacher_answer(text)`
reads a ticket's text (only the text: the truth is never passed to it) and answers like the teacher;
`INSTRUCTIONS` is the system prompt such a teacher would need to be told the schema, the categories, the
priority rules and the product names, which a distilled student no longer needs (the prompt tokens saved).
"""

from __future__ import annotations

import json
import random
import re
from dataclasses import dataclass

CATEGORIES = ("billing", "technical", "account", "shipping", "feature_request")
PRIORITIES = ("low", "medium", "high", "urgent")
# Product → the names customers call it by (the first is the product's own name).
PRODUCTS: dict[str, tuple[str, ...]] = {
    "CloudSync": ("CloudSync", "Cloud Sync", "the sync client"),
    "PhotoVault": ("PhotoVault", "Photo Vault", "the photo backup app"),
    "MailPilot": ("MailPilot", "Mail Pilot", "the email plugin"),
    "TaskBoard": ("TaskBoard", "Task Board", "the kanban board"),
    "SecureVPN": ("SecureVPN", "Secure VPN", "the VPN app"),
}

# The issue a customer describes, per category; {product} is one of the product's names.
_ISSUES: dict[str, tuple[str, ...]] = {
    "billing": (
        "I was charged twice for my {product} subscription this month.",
        "My invoice for {product} shows the annual price but I am on the monthly plan.",
        "The refund you promised for {product} never reached my card.",
        "Why did my {product} bill go up without any notice?",
    ),
    "technical": (
        "{product} crashes every time I open it after the last update.",
        "{product} shows error 0x80070005 when it starts.",
        "Since yesterday {product} freezes and uses all my CPU.",
        "{product} will not connect; it keeps saying the server timed out.",
    ),
    "account": (
        "I cannot log in to {product}; the password reset email never arrives.",
        "Please change the email address on my {product} account.",
        "My {product} account got locked after two-factor codes stopped working.",
        "How do I delete my {product} account and all its data?",
    ),
    "shipping": (
        "The {product} hardware key I ordered has not arrived; tracking has not moved in a week.",
        "My {product} welcome kit was delivered to the wrong address.",
        "The box with my {product} security token arrived damaged.",
        "Can you tell me where my {product} package is? The courier lost it.",
    ),
    "feature_request": (
        "It would be great if {product} had a dark mode.",
        "Could {product} export to CSV? We need it for reports.",
        "Please add a shared calendar view to {product}.",
        "I wish {product} let me schedule things for later.",
    ),
}
# What sets the priority: a phrase of that tier (medium has none of its own: the absence of the others).
_PRIORITY_PHRASES: dict[str, tuple[str, ...]] = {
    "urgent": (
        "Our whole team is blocked right now.",
        "This is an emergency, production is down.",
        "We are losing customers every minute, please act immediately.",
    ),
    "high": (
        "Please look at this today.",
        "It is affecting several of our users.",
        "I need this fixed before tomorrow's meeting.",
    ),
    "low": (
        "No rush, whenever you get a chance.",
        "Just letting you know, it is not blocking anything.",
        "Low priority, only a minor annoyance.",
    ),
    "medium": (
        "Thanks for your help.",
        "Let me know what you find.",
        "I appreciate any advice.",
    ),
}
_GREETINGS = ("Hi,", "Hello support,", "Hey there,", "Good morning,", "Hi team,", "")
_SIGNATURES = ("Maria", "Ken", "Aisha", "Tomás", "Priya", "Jonas", "Li Wei", "Sam", "Olga", "Dev")

# The teacher's reading rules: cue words per category and per priority, searched case-insensitively.
_CATEGORY_CUES: dict[str, tuple[str, ...]] = {
    "billing": ("charged", "invoice", "refund", "bill "),
    "technical": ("crash", "error", "freez", "connect"),
    "account": ("log in", "email address", "got locked", "delete my"),
    "shipping": ("arrived", "delivered", "package", "ordered"),
    "feature_request": ("would be great", "could ", "please add", "i wish"),
}
_PRIORITY_CUES: dict[str, tuple[str, ...]] = {
    "urgent": ("blocked right now", "emergency", "immediately"),
    "high": ("today", "several of our users", "before tomorrow"),
    "low": ("no rush", "not blocking", "low priority"),
}

INSTRUCTIONS = f"""You are a support-ticket triage assistant. Read the customer's ticket and reply with
one JSON object and nothing else, with exactly these keys:
- "category": one of {", ".join(CATEGORIES)}.
  billing: charges, invoices, refunds, prices. technical: crashes, errors, freezes, connection problems.
  account: logging in, passwords, e-mail address changes, locked or deleted accounts. shipping: physical
  items ordered, deliveries, couriers, damaged parcels. feature_request: ideas and wishes for the product.
- "priority": one of {", ".join(PRIORITIES)}.
  urgent: a whole team blocked, production down, an emergency, or losing customers now. high: must be
  handled today or before a near deadline, or several users affected. low: the customer says there is no
  rush or it blocks nothing. medium: everything else.
- "product": the product's official name, one of {", ".join(PRODUCTS)}, even when the customer calls it
  something else ({"; ".join(f"{names[2]} is {name}" for name, names in PRODUCTS.items())}).
Do not explain. Do not use a code block. Example:
{{"category": "technical", "priority": "high", "product": "MailPilot"}}"""

FIELDS = ("category", "priority", "product")


@dataclass(frozen=True)
class Ticket:
    text: str
    category: str
    priority: str
    product: str

    @property
    def truth(self) -> dict[str, str]:
        return {"category": self.category, "priority": self.priority, "product": self.product}


def make_tickets(count: int, seed: int = 0) -> list[Ticket]:
    """`count` tickets, the same for the same seed, with categories, priorities and products spread
    evenly in a shuffled order (so a held-out slice has every kind)."""
    rng = random.Random(seed)  # noqa: S311 (reproducible test data, not secrets)
    tickets = []
    for index in range(count):
        category = CATEGORIES[index % len(CATEGORIES)]
        priority = PRIORITIES[(index // len(CATEGORIES)) % len(PRIORITIES)]
        product = rng.choice(list(PRODUCTS))
        issue = rng.choice(_ISSUES[category]).format(product=rng.choice(PRODUCTS[product]))
        issue = issue[0].upper() + issue[1:]
        parts = [rng.choice(_GREETINGS), issue, rng.choice(_PRIORITY_PHRASES[priority])]
        if rng.random() < 0.5:
            parts.append(f"Order #{rng.randint(10000, 99999)}.")
        parts.append(f"- {rng.choice(_SIGNATURES)}")
        tickets.append(Ticket(" ".join(part for part in parts if part), category, priority, product))
    rng.shuffle(tickets)
    return tickets


def _first(text: str, cues: dict[str, tuple[str, ...]]) -> str | None:
    lowered = text.casefold()
    for label, words in cues.items():
        if any(word in lowered for word in words):
            return label
    return None


def teacher_fields(text: str) -> dict[str, str]:
    """What the teacher reads in a ticket's text."""
    product = next(
        (
            name
            for name, aliases in PRODUCTS.items()
            if any(re.search(re.escape(alias), text, re.IGNORECASE) for alias in aliases)
        ),
        "unknown",
    )
    return {
        "category": _first(text, _CATEGORY_CUES) or "technical",
        "priority": _first(text, _PRIORITY_CUES) or "medium",
        "product": product,
    }


def teacher_answer(text: str) -> str:
    """The teacher's answer: the JSON object alone, keys in schema order."""
    return json.dumps(teacher_fields(text))


def student_prompt(ticket: Ticket) -> str:
    """What the distilled student is asked: the ticket, no instructions."""
    return ticket.text


def teacher_messages(ticket: Ticket) -> list[dict[str, str]]:
    """What the teacher (or the base model, for a fair comparison) is asked: the instructions, then the
    ticket."""
    return [{"role": "system", "content": INSTRUCTIONS}, {"role": "user", "content": ticket.text}]


def training_rows(tickets: list[Ticket]) -> list[dict[str, str]]:
    """{prompt, answer} rows for the CPU trainer: the student's prompt and the teacher's answer."""
    return [{"prompt": student_prompt(ticket), "answer": teacher_answer(ticket.text)} for ticket in tickets]
