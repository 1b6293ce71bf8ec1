"""A dead letter's cause: the event type it named, and its first error's path and rule.

Letters with one cause are one problem, fixed or replayed together, whatever values they carried:
messages name the rule, never the value (``busapp.validation_messages``), and an array position
in a path is any position (``/payload/brackets/*/rate``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from busapp.models import CAUSE_LENGTH

NO_ERROR = "(no error recorded)"


@dataclass(frozen=True)
class Cause:
    """What the letters of one group share."""

    event_type: str  # "" when the body named none
    path: str  # "" when the error is about the whole message
    message: str

    @property
    def where(self) -> str:
        """The path, or what an empty path means."""
        return self.path or "(the whole message)"


def cause_path(path: str) -> str:
    """A JSON pointer with each array position (a segment of digits) as ``*``."""
    return "/".join("*" if segment.isdigit() else segment for segment in path.split("/"))


def cause_of(errors: Any, event_type: Any) -> Cause:
    """The cause of a letter with these errors (its first one decides) whose body named ``event_type``."""
    first = errors[0] if isinstance(errors, list) and errors and isinstance(errors[0], dict) else None
    kind = event_type[:150] if isinstance(event_type, str) else ""
    if first is None:
        return Cause(kind, "", NO_ERROR)
    path, message = str(first.get("path", "")), str(first.get("message", ""))
    return Cause(kind, cause_path(path)[:CAUSE_LENGTH], message[:CAUSE_LENGTH])
