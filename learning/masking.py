"""Personal data in text: the one detector set that log masking and guardrails share.

Algorithm (one pass per detector over the original text, then one rebuild):
1. Each detector finds candidates with a standard-library regular expression, then keeps only those its
   check accepts:
   - EMAIL: `local@domain.tld` (no check beyond the shape).
   - IBAN: two letters, two check digits, 11–30 letters or digits (written solid or in groups of 4); kept
     when the ISO 13616 mod-97 checksum is 1 (the first four characters moved to the end, letters as 10–35).
   - CARD: 13–19 digits, spaces or dashes allowed between them; kept when the Luhn checksum holds.
   - IP: dotted IPv4 and colon-separated IPv6 (with `::` and an embedded IPv4 tail); kept when the standard
     `ipaddress` module parses them (an IPv6 address must contain a digit, so C++'s `a::b` stays).
   - PHONE: digit groups of 2–5, an optional `+country` code and a `(area)` part, joined by spaces or
     dashes; kept with 8–15 digits after a `+` (E.164's ceiling), or 10–15 digits in at least two groups
     without it.
2. Candidates are taken in that priority order (an IBAN's digits are not also a phone number); one that
   overlaps a span already taken is dropped.
3. Every taken span is replaced by its label: `[EMAIL]`, `[IBAN]`, `[CARD]`, `[IP]`, `[PHONE]`.

Limits, by design of a checksum-and-shape detector (about 0.02 ms a prompt, no model, no download):
- Names, postal addresses and free-text identifiers are not detected; that needs a language model.
- A phone number written as one run of digits without `+` (`0612345678`), or with dots between groups, is
  not detected: plain digit runs are order numbers and timestamps far more often than phones.
- About one in ten 13–19-digit numbers passes Luhn by chance, so an unrelated long number in groups can be
  masked as a card; a card number that fails Luhn (a typo, a test number) is left alone on purpose.
- An IBAN is checked by its checksum only, not by each country's length or account format.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

EMAIL = "EMAIL"
IBAN = "IBAN"
CARD = "CARD"
IP = "IP"
PHONE = "PHONE"


@dataclass(frozen=True)
class Finding:
    """One piece of personal data: its kind and where it was in the original text ([start, end))."""

    kind: str
    start: int
    end: int


def luhn_valid(digits: str) -> bool:
    """The Luhn (mod 10) check of card numbers: double every second digit from the right."""
    total = 0
    for position, char in enumerate(reversed(digits)):
        value = int(char)
        if position % 2 == 1:
            value = value * 2 - 9 if value > 4 else value * 2
        total += value
    return total % 10 == 0


def iban_valid(iban: str) -> bool:
    """ISO 13616: move the first four characters to the end, letters become 10–35, the number mod 97 is 1."""
    compact = iban.replace(" ", "").upper()
    if not 15 <= len(compact) <= 34 or not compact.isalnum():
        return False
    rearranged = compact[4:] + compact[:4]
    return int("".join(str(int(char, 36)) for char in rearranged)) % 97 == 1


_EMAIL = re.compile(r"(?<![\w.+-])[A-Za-z0-9._%+-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,}(?!\w)")
_IBAN = re.compile(
    r"(?<![A-Za-z0-9])[A-Z]{2}\d{2}"
    r"(?:[A-Z0-9]{11,30}|(?: [A-Z0-9]{4}){2,7}(?: [A-Z0-9]{1,3})?)"  # solid, or in groups of 4
    r"(?![A-Za-z0-9])"
)
_CARD = re.compile(r"(?<![\d-])\d(?:[ -]?\d){12,18}(?![\d-])")
_IPV4 = re.compile(r"(?<![\d.])\d{1,3}(?:\.\d{1,3}){3}(?!\d|\.\d)")
_IPV6 = re.compile(r"(?<![\w:.])[0-9A-Fa-f]{0,4}(?::[0-9A-Fa-f]{0,4}){2,7}(?:\.\d{1,3}){0,3}(?![\w:])")
_PHONE = re.compile(r"(?<![\w+])(?:\+\d{1,3}[ -]?)?(?:\(\d{1,5}\)[ -]?)?\d{2,5}(?:[ -]?\d{2,5}){0,6}(?![\w])")


def _email(match: re.Match[str]) -> bool:
    return True


def _iban(match: re.Match[str]) -> bool:
    return iban_valid(match.group())


def _card(match: re.Match[str]) -> bool:
    digits = re.sub(r"\D", "", match.group())
    return 13 <= len(digits) <= 19 and luhn_valid(digits)


def _ipv4(match: re.Match[str]) -> bool:
    try:
        ipaddress.IPv4Address(match.group())
    except ValueError:
        return False
    return True


def _ipv6(match: re.Match[str]) -> bool:
    text = match.group()
    if not any(char.isdigit() for char in text):  # "::" or "a::b": a separator in prose or code
        return False
    try:
        ipaddress.IPv6Address(text)
    except ValueError:
        return False
    return True


def _phone(match: re.Match[str]) -> bool:
    text = match.group()
    digits = sum(char.isdigit() for char in text)
    if text.startswith("+"):
        return 8 <= digits <= 15
    groups = len(re.findall(r"\d+", text))
    return 10 <= digits <= 15 and groups >= 2


# Priority order: a span taken by an earlier detector is not offered to a later one. The third field is a
# character every match contains: a text without it skips the expression (most prose has no "@" or ":").
DETECTORS: tuple[tuple[str, re.Pattern[str], str, Callable[[re.Match[str]], bool]], ...] = (
    (EMAIL, _EMAIL, "@", _email),
    (IBAN, _IBAN, "", _iban),
    (CARD, _CARD, "", _card),
    (IP, _IPV6, ":", _ipv6),  # before IPv4, so an IPv6 address with an IPv4 tail is taken whole
    (IP, _IPV4, ".", _ipv4),
    (PHONE, _PHONE, "", _phone),
)
_DIGIT = re.compile(r"\d")


def find(text: str) -> list[Finding]:
    """The personal data in `text`, in order of position; spans never overlap."""
    taken: list[Finding] = []
    # Every detector but EMAIL needs a digit; one scan for one saves five over prose without numbers.
    has_digit = _DIGIT.search(text) is not None
    for kind, pattern, needs, accept in DETECTORS:
        if (kind != EMAIL and not has_digit) or (needs and needs not in text):
            continue
        for match in pattern.finditer(text):
            start, end = match.span()
            if accept(match) and not any(start < f.end and f.start < end for f in taken):
                taken.append(Finding(kind, start, end))
    return sorted(taken, key=lambda finding: finding.start)


def mask(text: str) -> tuple[str, list[Finding]]:
    """`text` with every finding replaced by its label (`[EMAIL]`…), and the findings (positions in the
    original text). Text without findings is returned as it was."""
    findings = find(text)
    if not findings:
        return text, findings
    parts: list[str] = []
    position = 0
    for finding in findings:
        parts.append(text[position : finding.start])
        parts.append(f"[{finding.kind}]")
        position = finding.end
    parts.append(text[position:])
    return "".join(parts), findings


def mask_json(value: Any) -> tuple[Any, list[Finding]]:
    """A copy of a JSON-like value (what json.loads returns) with every string in it masked, and all
    findings. Keys are left alone: they are the request's shape (`messages`, `content`), not its data.
    Finding positions are within the string they were found in."""
    findings: list[Finding] = []

    def walk(item: Any) -> Any:
        if isinstance(item, str):
            masked, found = mask(item)
            findings.extend(found)
            return masked
        if isinstance(item, dict):
            return {key: walk(inner) for key, inner in item.items()}
        if isinstance(item, list | tuple):
            return [walk(inner) for inner in item]
        return item

    return walk(value), findings
