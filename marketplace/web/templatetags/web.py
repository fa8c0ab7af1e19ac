"""Small template filters of the web UI."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

from django import template

register = template.Library()


@register.filter
def get(mapping: Any, key: str) -> Any:
    """`errors|get:"name"`: a dictionary's value by a key that is not a valid template name."""
    if isinstance(mapping, dict):
        return mapping.get(key)
    return None


@register.filter
def count(number: int | None) -> str:
    """135000000 → 135M, 7600000000 → 7.6B, 131072 → 131K (parameters, tokens, context lengths)."""
    if number is None:
        return "–"
    for size, suffix in ((1e12, "T"), (1e9, "B"), (1e6, "M"), (1e3, "K")):
        if abs(number) >= size:
            value = number / size
            text = f"{value:.1f}".rstrip("0").rstrip(".") if value < 100 else f"{value:.0f}"
            return f"{text}{suffix}"
    return str(number)


@register.filter
def usd(amount: Decimal | float | None) -> str:
    if amount is None:
        return "–"
    return "free" if amount == 0 else f"${amount:,.2f}"


@register.filter
def context(tokens: int | None) -> str:
    """Context lengths as model cards write them: 131072 → 128K, 1048576 → 1M, 8000 → 8K."""
    if not tokens:
        return "–"
    if tokens % (1024 * 1024) == 0:
        return f"{tokens // (1024 * 1024)}M"
    if tokens % 1024 == 0:
        return f"{tokens // 1024}K"
    return count(tokens)
