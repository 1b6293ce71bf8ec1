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
