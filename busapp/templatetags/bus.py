"""Template filters of the dashboard."""

from __future__ import annotations

import json
from typing import Any

from django import template

from busapp.permissions import principal_word, right_word
from busapp.selectors import grant_key

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


register.filter("right_word", right_word)
register.filter("principal_word", principal_word)


@register.filter
def checker_word(checked_by: str) -> str:
    """Who ran an audit-chain check, as people say it: "the bus worker", "the command line (root)", a login name."""
    kind, _, name = checked_by.partition(":")
    if kind == "system":
        return f"the {name.replace('-', ' ')}"
    return f"the command line ({name})" if kind == "cli" else checked_by


@register.filter(name="grant_key")
def grant_key_filter(grant: Any) -> str:
    """The form key of a grant (``u12``, ``g3``), as the revoke pages take it."""
    return grant_key(grant)


@register.filter
def duration(seconds: float | None) -> str:
    """Seconds as people say them: '0.8 s', '45 s', '4 min', '2 h 5 min', '3 d 2 h'."""
    if seconds is None:
        return ""
    if seconds < 10:
        return f"{seconds:.1f} s"
    if seconds < 60:
        return f"{seconds:.0f} s"
    minutes = int(seconds // 60)
    if minutes < 60:
        return f"{minutes} min"
    hours, minutes = divmod(minutes, 60)
    if hours < 24:
        return f"{hours} h {minutes} min" if minutes else f"{hours} h"
    days, hours = divmod(hours, 24)
    return f"{days} d {hours} h" if hours else f"{days} d"
