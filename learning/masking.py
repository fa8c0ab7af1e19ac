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
   - US_SSN: `AAA-GG-SSSS` (dashes or spaces required); kept when the area is not 000, 666 or 900–999,
     the group not 00 and the serial not 0000 (the Social Security Administration's rules).
   - UK_NINO: two prefix letters, six digits, a suffix A–D (spaces allowed between pairs); kept when the
     prefix follows HMRC's rules (no D, F, I, Q, U, V; no O second; not BG, GB, KN, NK, NT, TN, ZZ).
   - NL_BSN: nine digits (solid, or 4-2-3 / 3-3-3 with dots or spaces); kept when the 11-test holds
     (9·d1 + 8·d2 + … + 2·d8 − d9 is a multiple of 11, not zero).
   - IN_AADHAAR: twelve digits in groups of four (or solid), the first 2–9; kept when the Verhoeff
     check digit holds.
   - PHONE: digit groups of 2–5, an optional `+country` code and a `(area)` part, joined by spaces or
     dashes; kept with 8–15 digits after a `+` (E.164's ceiling), or 10–15 digits in at least two groups
     without it.
2. Candidates are taken in that priority order (an IBAN's digits are not also a phone number, an Aadhaar
   number's three groups are not one either); one that overlaps a span already taken is dropped.
3. Every taken span is replaced by its label: `[EMAIL]`, `[IBAN]`, `[CARD]`, `[IP]`, `[PHONE]`, `[US_SSN]`…

Log masking asks for LOG_KINDS (the five it has always masked); guardrails choose among ALL_KINDS.

Limits, by design of a checksum-and-shape detector (about 0.02 ms a prompt, no model, no download):
- Names, postal addresses and free-text identifiers are not detected; that needs a language model.
- A phone number written as one run of digits without `+` (`0612345678`), or with dots between groups, is
  not detected: plain digit runs are order numbers and timestamps far more often than phones.
- About one in ten 13–19-digit numbers passes Luhn by chance, so an unrelated long number in groups can be
  masked as a card; a card number that fails Luhn (a typo, a test number) is left alone on purpose.
- An IBAN is checked by its checksum only, not by each country's length or account format.
- One in eleven nine-digit numbers passes the BSN 11-test and one in ten twelve-digit numbers the Aadhaar
  check, so those two detectors (guardrails only, off in log masking) can take an order number for an
  identifier; an SSN is recognised only with its separators, since nine solid digits say nothing.
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
US_SSN = "US_SSN"
UK_NINO = "UK_NINO"
NL_BSN = "NL_BSN"
IN_AADHAAR = "IN_AADHAAR"
LOG_KINDS = frozenset({EMAIL, IBAN, CARD, IP, PHONE})
ALL_KINDS = (EMAIL, PHONE, CARD, IBAN, IP, US_SSN, UK_NINO, NL_BSN, IN_AADHAAR)


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


def bsn_valid(digits: str) -> bool:
    """The Dutch 11-test of a nine-digit BSN: 9·d1 + 8·d2 + … + 2·d8 − 1·d9 is a multiple of 11 (not 0)."""
    if len(digits) != 9 or not digits.isdigit():
        return False
    total = sum(
        int(digit) * weight for digit, weight in zip(digits, (9, 8, 7, 6, 5, 4, 3, 2, -1), strict=True)
    )
    return total != 0 and total % 11 == 0


# Verhoeff's dihedral-group tables (multiplication, permutation), as published with the algorithm.
_VERHOEFF_D = (
    (0, 1, 2, 3, 4, 5, 6, 7, 8, 9), (1, 2, 3, 4, 0, 6, 7, 8, 9, 5), (2, 3, 4, 0, 1, 7, 8, 9, 5, 6),
    (3, 4, 0, 1, 2, 8, 9, 5, 6, 7), (4, 0, 1, 2, 3, 9, 5, 6, 7, 8), (5, 9, 8, 7, 6, 0, 4, 3, 2, 1),
    (6, 5, 9, 8, 7, 1, 0, 4, 3, 2), (7, 6, 5, 9, 8, 2, 1, 0, 4, 3), (8, 7, 6, 5, 9, 3, 2, 1, 0, 4),
    (9, 8, 7, 6, 5, 4, 3, 2, 1, 0),
)  # fmt: skip
_VERHOEFF_P = (
    (0, 1, 2, 3, 4, 5, 6, 7, 8, 9), (1, 5, 7, 6, 2, 8, 3, 0, 9, 4), (5, 8, 0, 3, 7, 9, 6, 1, 4, 2),
    (8, 9, 1, 6, 0, 4, 3, 5, 2, 7), (9, 4, 5, 3, 1, 2, 6, 8, 7, 0), (4, 2, 8, 6, 5, 7, 3, 9, 0, 1),
    (2, 7, 9, 3, 8, 0, 6, 4, 1, 5), (7, 0, 4, 6, 9, 1, 3, 2, 5, 8),
)  # fmt: skip


def verhoeff_valid(digits: str) -> bool:
    """Verhoeff's check (Aadhaar's last digit): the running product over the reversed digits ends at 0."""
    check = 0
    for position, char in enumerate(reversed(digits)):
        check = _VERHOEFF_D[check][_VERHOEFF_P[position % 8][int(char)]]
    return check == 0


_EMAIL = re.compile(r"(?<![\w.+-])[A-Za-z0-9._%+-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,}(?!\w)")
# Each expression starts with the character class of its first character and checks the character
# before it by a look-behind placed after it: the regular expression engine then skips to candidate
# characters instead of trying every position of the text (a tenth of the time on prose).
_IBAN = re.compile(
    r"[A-Z](?<![A-Za-z0-9][A-Z])[A-Z]\d{2}"
    r"(?:[A-Z0-9]{11,30}|(?: [A-Z0-9]{4}){2,7}(?: [A-Z0-9]{1,3})?)"  # solid, or in groups of 4
    r"(?![A-Za-z0-9])"
)
_CARD = re.compile(r"(?:\d(?<![\d-]\d)(?:[ -]?\d){12,18})(?![\d-])")
_IPV4 = re.compile(r"(?:\d(?<![\d.]\d)\d{0,2}(?:\.\d{1,3}){3})(?!\d|\.\d)")
_IPV6 = re.compile(r"(?<![\w:.])[0-9A-Fa-f]{0,4}(?::[0-9A-Fa-f]{0,4}){2,7}(?:\.\d{1,3}){0,3}(?![\w:])")
_US_SSN = re.compile(r"(\d(?<![\d-]\d)\d{2})([- ])(\d{2})\2(\d{4})(?![\d-])")
_UK_NINO = re.compile(r"([A-Z](?<![A-Za-z0-9][A-Z])[A-Z]) ?(\d{2}) ?(\d{2}) ?(\d{2}) ?([A-D])(?![A-Za-z0-9])")
_NL_BSN = re.compile(
    r"(?:\d(?<![\d.-]\d)(?:\d{8}|\d{3}([. ])\d{2}\1\d{3}|\d{2}([. ])\d{3}\2\d{3}))(?![\d-]|\.\d)"
)
_IN_AADHAAR = re.compile(r"(?:[2-9](?<![\d-][2-9])\d{3}( ?)\d{4}\1\d{4})(?![\d-])")
_PHONE = re.compile(
    r"(?:\+(?<![\w+]\+)\d{1,3}[ -]?(?:\(\d{1,5}\)[ -]?)?\d{2,5}"  # +country, maybe (area), a group
    r"|\((?<![\w+]\()\d{1,5}\)[ -]?\d{2,5}"  # (area), a group
    r"|\d(?<![\w+]\d)\d{1,4})"  # a group
    r"(?:[ -]?\d{2,5}){0,6}(?![\w])"
)


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


def _us_ssn(match: re.Match[str]) -> bool:
    area, group, serial = int(match.group(1)), match.group(3), match.group(4)
    return area != 0 and area != 666 and area < 900 and group != "00" and serial != "0000"


_NINO_NEVER_FIRST, _NINO_NEVER_SECOND = set("DFIQUV"), set("DFIOQUV")
_NINO_NOT_ALLOCATED = {"BG", "GB", "KN", "NK", "NT", "TN", "ZZ"}


def _uk_nino(match: re.Match[str]) -> bool:
    prefix = match.group(1)
    return (
        prefix[0] not in _NINO_NEVER_FIRST
        and prefix[1] not in _NINO_NEVER_SECOND
        and prefix not in _NINO_NOT_ALLOCATED
    )


def _nl_bsn(match: re.Match[str]) -> bool:
    return bsn_valid(re.sub(r"\D", "", match.group()))


def _in_aadhaar(match: re.Match[str]) -> bool:
    return verhoeff_valid(re.sub(r"\D", "", match.group()))


def _phone(match: re.Match[str]) -> bool:
    text = match.group()
    digits = sum(char.isdigit() for char in text)
    if text.startswith("+"):
        return 8 <= digits <= 15
    groups = len(re.findall(r"\d+", text))
    return 10 <= digits <= 15 and groups >= 2


# Priority order: a span taken by an earlier detector is not offered to a later one. The third field is a
# character every match contains: a text without it skips the expression (most prose has no "@" or ":").
# The fourth is the fewest digits a match holds: every detector but EMAIL scans only around the text's
# digits (`_windows`), and only where there are that many (most prompts have a handful, far apart).
DETECTORS: tuple[tuple[str, re.Pattern[str], str, int, Callable[[re.Match[str]], bool]], ...] = (
    (EMAIL, _EMAIL, "@", 0, _email),
    (IBAN, _IBAN, "", 2, _iban),
    (CARD, _CARD, "", 13, _card),
    (IP, _IPV6, ":", 1, _ipv6),  # before IPv4, so an IPv6 address with an IPv4 tail is taken whole
    (IP, _IPV4, ".", 4, _ipv4),
    (US_SSN, _US_SSN, "", 9, _us_ssn),
    (UK_NINO, _UK_NINO, "", 6, _uk_nino),
    (NL_BSN, _NL_BSN, "", 9, _nl_bsn),
    (IN_AADHAAR, _IN_AADHAAR, "", 12, _in_aadhaar),
    (PHONE, _PHONE, "", 8, _phone),
)
_DIGITS = re.compile(r"\d+")


# How far from its digits a match can reach (an IPv6 address with one digit at an end, 45 characters;
# an IBAN's letters after its last digit), with room for the look-arounds.
_REACH = 48
_FEW_DIGITS = 64


def _windows(text: str) -> list[tuple[int, int, int]]:
    """The spans around the digits of `text` that a digit-holding match must lie in, each with how
    many digits it holds: digits closer than twice the reach share a span. So each detector then scans
    only what surrounds numbers (in prose, a hundred characters a number), and only where there are
    enough digits for one of its matches, instead of the whole text.

    Most texts are ASCII with a few numbers: there ten `str.count` and a `str.find` per digit (C loops)
    cost less than one regular-expression scan, which the others take."""
    positions: list[int] = []
    if text.isascii() and sum(map(text.count, "0123456789")) <= _FEW_DIGITS:
        for digit in "0123456789":
            position = text.find(digit)
            while position != -1:
                positions.append(position)
                position = text.find(digit, position + 1)
        positions.sort()
        runs = [(position, position + 1) for position in positions]
    else:
        runs = [run.span() for run in _DIGITS.finditer(text)]
    windows: list[tuple[int, int, int]] = []
    for start, end in runs:
        low, high = max(0, start - _REACH), min(len(text), end + _REACH)
        if windows and low <= windows[-1][1]:
            windows[-1] = (windows[-1][0], high, windows[-1][2] + end - start)
        else:
            windows.append((low, high, end - start))
    return windows


def find(text: str, kinds: frozenset[str] = LOG_KINDS) -> list[Finding]:
    """The personal data of the given kinds in `text`, in order of position; spans never overlap. A
    detector left out does not take its spans, so the others may (a guardrail without IBAN still masks
    the phone-shaped digits inside one)."""
    taken: list[Finding] = []
    windows = _windows(text)
    whole = [(0, len(text), len(text))]
    for kind, pattern, needs, fewest_digits, accept in DETECTORS:
        if kind not in kinds or (needs and needs not in text):
            continue
        # A look-behind sees before a window's start; a window ends at least _REACH past its last digit,
        # so no match reaches its end and every look-ahead reads the text's own characters.
        for start, end, digits in whole if kind == EMAIL else windows:
            if digits < fewest_digits:
                continue
            for match in pattern.finditer(text, start, end):
                found_start, found_end = match.span()
                if accept(match) and not any(found_start < f.end and f.start < found_end for f in taken):
                    taken.append(Finding(kind, found_start, found_end))
    return sorted(taken, key=lambda finding: finding.start)


def mask(text: str) -> tuple[str, list[Finding]]:
    """`text` with every finding replaced by its label (`[EMAIL]`…), and the findings (positions in the
    original text). Text without findings is returned as it was."""
    findings = find(text)
    return redact(text, findings), findings


def redact(text: str, findings: list[Finding]) -> str:
    """`text` with each of `findings` (in order of position, not overlapping) replaced by its label."""
    if not findings:
        return text
    parts: list[str] = []
    position = 0
    for finding in findings:
        parts.append(text[position : finding.start])
        parts.append(f"[{finding.kind}]")
        position = finding.end
    parts.append(text[position:])
    return "".join(parts)


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
