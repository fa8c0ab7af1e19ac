"""Personal data through Microsoft Presidio's pattern recognizers: a guardrail's optional detector.

A guardrail chooses its personal-data detector (`detector` in its configuration): `builtin`, the default,
is learning.masking's regular expressions with checksums (about 0.06 ms for 1 KB, every type); `presidio`
runs Presidio's own recognizers for the same entity types (about 2.5 ms for 1 KB on this CPU, mostly its phone
recognizer, which asks python-phonenumbers about eight regions). Both return learning.masking.Finding
spans, so masking, blocking, reporting and streams work the same way with either.

How it is used, and why:
1. No NLP engine. Presidio's AnalyzerEngine wants a spaCy (or other) NLP engine even when only pattern
   recognizers run, and no spaCy model is installable here (the official model wheels are not on the
   package registries). Pattern recognizers need no NLP artifacts, so each one's `analyze` is called
   directly; context words (which would need the NLP engine's tokens) do not raise scores.
   Person names need a named-entity model: not available (learning.guardrails.service says so).
2. Offline. Presidio's e-mail recognizer validates the domain with tldextract's module-level extractor,
   which downloads the public-suffix list on first use. It is replaced by a TLDExtract reading only the
   list bundled with tldextract (no URL, no disk cache): nothing here opens a connection.
3. Scores. A recognizer's validation (Luhn, IBAN and Aadhaar checksums, IP parsing, the e-mail domain)
   sets a score of 1; unvalidated patterns keep Presidio's own (phone 0.4, UK NINO 0.5, a separated US SSN
   0.5, a bare nine-digit number as an SSN 0.05). Results under MIN_SCORE, the "very weak" patterns, are
   dropped: any nine-digit number would otherwise be an SSN.
4. Overlaps. Presidio may find one span as two types (a card's digits as a phone number): the higher
   score wins, then the longer span, so the spans returned never overlap.
5. Types without a Presidio recognizer (the Dutch BSN) use the built-in detector.

Streams: StreamGuard holds back at least learning.guardrails.MIN_HOLD_BACK (64) characters and never cuts
inside a run of characters without spaces; the longest entity Presidio finds with spaces is an IBAN
written in groups of four (at most 42 characters), so every entity is detected whole before any of it is
released, as with the built-in detector.
"""

from __future__ import annotations

import functools
import importlib.util
from typing import Any

from learning import masking

# Our entity types -> Presidio's entity names (and recognizers, built in `_recognizers`).
ENTITIES = {
    masking.EMAIL: "EMAIL_ADDRESS",
    masking.PHONE: "PHONE_NUMBER",
    masking.CARD: "CREDIT_CARD",
    masking.IBAN: "IBAN_CODE",
    masking.IP: "IP_ADDRESS",
    masking.US_SSN: "US_SSN",
    masking.UK_NINO: "UK_NINO",
    masking.IN_AADHAAR: "IN_AADHAAR",
}
MIN_SCORE = 0.4
LONGEST_SPACED_ENTITY = 42  # an IBAN in groups of four: 34 characters and 8 spaces


def available() -> bool:
    """Whether the `presidio` extra (presidio-analyzer) is installed in this environment."""
    return importlib.util.find_spec("presidio_analyzer") is not None


@functools.cache
def offline_domains() -> Any:
    """A tldextract extractor that reads the public-suffix list bundled with tldextract only."""
    import tldextract

    return tldextract.TLDExtract(cache_dir=None, suffix_list_urls=(), fallback_to_snapshot=True)


@functools.cache
def _recognizers() -> dict[str, Any]:
    """One recognizer per entity type, built once per process (their expressions compile once)."""
    from presidio_analyzer import predefined_recognizers as predefined

    class OfflineEmailRecognizer(predefined.EmailRecognizer):
        """Presidio's e-mail recognizer, validating the domain against the bundled suffix list."""

        def validate_result(self, pattern_text: str) -> bool:
            return bool(offline_domains()(pattern_text).fqdn)

    return {
        masking.EMAIL: OfflineEmailRecognizer(),
        masking.PHONE: predefined.PhoneRecognizer(),
        masking.CARD: predefined.CreditCardRecognizer(),
        masking.IBAN: predefined.IbanRecognizer(),
        masking.IP: predefined.IpRecognizer(),
        masking.US_SSN: predefined.UsSsnRecognizer(),
        masking.UK_NINO: predefined.UkNinoRecognizer(),
        masking.IN_AADHAAR: predefined.InAadhaarRecognizer(),
    }


def load() -> None:
    """Import Presidio and build its recognizers now (a policy compiles before its first call)."""
    _recognizers()


def find(text: str, kinds: frozenset[str]) -> list[masking.Finding]:
    """The personal data of the given types in `text`, by start, never overlapping (see the docstring)."""
    recognizers = _recognizers()
    scored: list[tuple[float, masking.Finding]] = []
    for kind in kinds:
        recognizer = recognizers.get(kind)
        if recognizer is None:
            scored.extend((1.0, finding) for finding in masking.find(text, frozenset((kind,))))
            continue
        for result in recognizer.analyze(text, [ENTITIES[kind]], None):
            if result.score >= MIN_SCORE and result.end > result.start:
                scored.append((result.score, masking.Finding(kind, result.start, result.end)))
    if not scored:
        return []
    kept: list[masking.Finding] = []
    for _, finding in sorted(scored, key=lambda s: (-s[0], s[1].start - s[1].end, s[1].start)):
        if all(finding.end <= other.start or other.end <= finding.start for other in kept):
            kept.append(finding)
    return sorted(kept, key=lambda finding: finding.start)
