"""Template filters of the dashboard."""

from __future__ import annotations

import json
from typing import Any

from django import template

register = template.Library()


@register.filter
def as_json(value: Any) -> str:
    """A value as compact JSON text (the page autoescapes it, so a payload's markup stays text)."""
    return json.dumps(value, ensure_ascii=False, separators=(", ", ": "))


@register.filter
def as_pretty_json(value: Any) -> str:
    """A value as indented JSON text, keys in their own order (autoescaped by the page)."""
    return json.dumps(value, ensure_ascii=False, indent=2)


@register.filter
def payload_summary(value: Any, length: int = 140) -> str:
    """A payload as one line of JSON text, cut at ``length`` characters (the record has it whole)."""
    text = json.dumps(value, ensure_ascii=False, separators=(", ", ": "))
    return text if len(text) <= length else f"{text[: length - 1]}…"
