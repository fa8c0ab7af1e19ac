"""Masking personal data: each detector on real shapes, and what must stay untouched."""

from __future__ import annotations

import pytest

from learning.masking import CARD, EMAIL, IBAN, IP, PHONE, iban_valid, luhn_valid, mask, mask_json


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("Write to jane.doe+orders@example.co.uk today.", "Write to [EMAIL] today."),
        ("Card 4111 1111 1111 1111, exp 12/29", "Card [CARD], exp 12/29"),
        ("Amex 378282246310005 on file", "Amex [CARD] on file"),
        ("pay 5555-5555-5555-4444 now", "pay [CARD] now"),
        ("IBAN DE89 3704 0044 0532 0130 00 BIC COBADEFFXXX", "IBAN [IBAN] BIC COBADEFFXXX"),
        ("to GB82WEST12345698765432.", "to [IBAN]."),
        ("from 192.168.1.20 at noon", "from [IP] at noon"),
        ("server 10.0.0.1.", "server [IP]."),
        ("v6 2001:db8:85a3::8a2e:370:7334 and ::ffff:192.0.2.1", "v6 [IP] and [IP]"),
        ("call +44 20 7946 0958 please", "call [PHONE] please"),
        ("call (555) 123-4567 or 555-123-4567", "call [PHONE] or [PHONE]"),
        ("ring +33612345678", "ring [PHONE]"),
    ],
)
def test_personal_data_is_replaced_by_its_label(text: str, expected: str) -> None:
    assert mask(text)[0] == expected


@pytest.mark.parametrize(
    "text",
    [
        "Card 4111 1111 1111 1112 fails Luhn",  # one digit off a valid test card
        "IBAN DE89 3704 0044 0532 0130 01 has a wrong checksum",
        "On 2024-01-15 at 12:30:45, order 1234567890 (ts 1700000000) shipped.",
        "std::vector<int> and a::b are code, version 1.2.3.4.5 is not an address",
        "999.1.1.1 is not an address",
        "MAC 00:1A:2B:3C:4D:5E is hardware",
        "A plain sentence with no numbers at all.",
    ],
)
def test_what_is_not_personal_data_stays(text: str) -> None:
    masked, findings = mask(text)
    assert (masked, findings) == (text, [])


def test_findings_give_kind_and_position_in_the_original_text() -> None:
    text = "a@b.io 4111111111111111"
    _, findings = mask(text)
    assert [(f.kind, text[f.start : f.end]) for f in findings] == [
        (EMAIL, "a@b.io"),
        (CARD, "4111111111111111"),
    ]


def test_an_iban_is_not_also_counted_as_a_phone_or_card() -> None:
    _, findings = mask("DE89 3704 0044 0532 0130 00")
    assert [f.kind for f in findings] == [IBAN]


def test_a_card_number_inside_an_email_is_taken_as_the_email() -> None:
    _, findings = mask("4111111111111111@example.com")
    assert [f.kind for f in findings] == [EMAIL]


def test_luhn_and_mod97_checksums() -> None:
    assert luhn_valid("79927398713") and not luhn_valid("79927398710")
    assert iban_valid("GB82 WEST 1234 5698 7654 32") and not iban_valid("GB82 WEST 1234 5698 7654 33")


def test_every_string_in_a_json_request_is_masked_and_keys_and_numbers_stay() -> None:
    request = {
        "model": "chat",
        "temperature": 0.2,
        "max_tokens": 4111111111111111,
        "messages": [
            {"role": "system", "content": "You help customers."},
            {"role": "user", "content": "I am bob@example.com, from 203.0.113.9, phone +1 415 555 0100"},
        ],
        "metadata": {"bob@example.com": ["+44 20 7946 0958"]},
    }
    masked, findings = mask_json(request)
    assert masked == {
        "model": "chat",
        "temperature": 0.2,
        "max_tokens": 4111111111111111,
        "messages": [
            {"role": "system", "content": "You help customers."},
            {"role": "user", "content": "I am [EMAIL], from [IP], phone [PHONE]"},
        ],
        "metadata": {"bob@example.com": ["[PHONE]"]},
    }
    assert sorted(f.kind for f in findings) == sorted([EMAIL, IP, PHONE, PHONE])
    assert request["messages"][1]["content"].startswith("I am bob@")  # the original is not changed
