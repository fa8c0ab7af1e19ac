"""Refusals in the product's words. Django and DRF word their generic checks for developers ("Object with
username=ghost does not exist.", "Ensure this value has at most 200 characters (it has 250)."); the
REST API's error handler and the web UI's forms pass every message through `reword`, so people read
what is wrong and what to do, whichever door they came in by.

Only the framework's own English templates are recognised (by their exact shape); every other message,
including all of ours, passes through unchanged. A value quoted back is shortened, so a 400-character
input does not come back as a 400-character message.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

from rest_framework.exceptions import ErrorDetail

QUOTED_MAX = 40


def quoted(value: str) -> str:
    """A value as a message quotes it: at most QUOTED_MAX characters."""
    return f"“{value[: QUOTED_MAX - 1]}…”" if len(value) > QUOTED_MAX else f"“{value}”"


def _too_long(match: re.Match[str]) -> str:
    has = f" (this has {int(match['has']):,})" if match["has"] else ""
    return f"Too long: at most {int(match['limit']):,} {match['unit']}{has}."


def _too_short(match: re.Match[str]) -> str:
    return f"Too short: at least {int(match['limit']):,} {match['unit']}."


def _no_such(match: re.Match[str]) -> str:
    field = match["field"].replace("_", " ")
    return f"There is no {field} {quoted(match['value'])}: check the spelling."


SHAPES: tuple[tuple[re.Pattern[str], Callable[[re.Match[str]], str]], ...] = (
    (
        re.compile(
            r"Ensure this (?:field|value) has (?:no more than|at most) (?P<limit>\d+) "
            r"(?P<unit>characters?|elements?)(?: \(it has (?P<has>\d+)\))?\."
        ),
        _too_long,
    ),
    (
        re.compile(
            r"Ensure this (?:field|value) has at least (?P<limit>\d+) (?P<unit>characters?|elements?)"
            r"(?: \(it has \d+\))?\."
        ),
        _too_short,
    ),
    (re.compile(r"Ensure this value is less than or equal to (?P<n>\S+)\."), lambda m: f"At most {m['n']}."),
    (re.compile(r"Ensure this value is greater than or equal to (?P<n>\S+)\."),
     lambda m: f"At least {m['n']}."),
    (re.compile(r"Object with (?P<field>\w+)=(?P<value>.*) does not exist\.", re.DOTALL), _no_such),
    (re.compile(r"Invalid pk \"(?P<value>.*)\" - object does not exist\.", re.DOTALL),
     lambda m: f"Nothing with the id {quoted(m['value'])} exists."),
    (re.compile(r"A valid integer is required\."), lambda m: "Enter a whole number."),
    (re.compile(r"A valid number is required\."), lambda m: "Enter a number."),
    (re.compile(r"Must be a valid boolean\."), lambda m: "Enter true or false."),
    (re.compile(r"Not a valid string\."), lambda m: "Enter text."),
    (re.compile(r"This field may not be blank\."), lambda m: "Fill this in."),
    (re.compile(r"This field may not be null\."), lambda m: "Fill this in."),
    (re.compile(r"String value too large\."), lambda m: "Too long to be a number."),
    (re.compile(r"\"(?P<value>.*)\" is not a valid choice\.", re.DOTALL),
     lambda m: f"{quoted(m['value'])} is not a valid choice."),
    (re.compile(r"Select a valid choice\. That choice is not one of the available choices\."),
     lambda m: "Not one of the choices offered: pick one from the list."),
    (re.compile(r"Select a valid choice\. (?P<value>.*) is not one of the available choices\.", re.DOTALL),
     lambda m: f"{quoted(m['value'])} is not a valid choice."),
)  # fmt: skip


def reword(message: str) -> str:
    """`message` in the product's words if it is one of the framework's generic refusals, else as it is."""
    for shape, words in SHAPES:
        match = shape.fullmatch(message)
        if match:
            return words(match)
    return message


def reword_all(detail: Any) -> Any:
    """Every message of a refusal (a string, or lists and dicts of them, as DRF gives them) reworded;
    DRF's ErrorDetail keeps its code."""
    if isinstance(detail, dict):
        return {key: reword_all(value) for key, value in detail.items()}
    if isinstance(detail, list):
        return [reword_all(value) for value in detail]
    if isinstance(detail, str):
        text = reword(str(detail))
        if text == str(detail):
            return detail
        code = getattr(detail, "code", None)
        if code is not None:
            return ErrorDetail(text, code=code)
        return text
    return detail
