"""The domain's errors: what the bus refuses, each problem a path and a message, in one place.

Views, the API (``api/errors.py`` maps each to its status), management commands and the
worker catch these; the modules that raise them import them from here.
"""

from __future__ import annotations

import asyncio
from typing import TypedDict


class FieldError(TypedDict):
    """One problem with an input, at a JSON pointer path: ``{"path": "/payload/x", "message": "..."}``."""

    path: str
    message: str


def errors_joined(errors: list[FieldError]) -> str:
    """Every problem on one line: ``/payload/x: is below the minimum of 0; ...``."""
    return "; ".join(f"{error['path']}: {error['message']}" for error in errors)


class BusInputError(Exception):
    """Input the bus refuses, with every problem as a path and a message."""

    def __init__(self, errors: list[FieldError]) -> None:
        self.errors = errors
        super().__init__(errors_joined(errors))


class TopicNotFoundError(BusInputError):
    """The named topic does not exist."""


class ApprovalRequiredError(BusInputError):
    """A sensitive topic's publish lacks a second person's approval."""


class RightRefusedError(BusInputError):
    """The actor is not one the rule lets do this (cancel someone else's request without the approve right)."""


class ActionRefusedError(BusInputError):
    """An action the record's state does not allow (already decided, already replayed) or missing its reason."""


class RecordInvalidError(BusInputError):
    """A topic or event type the registry refuses: a name against its rule, a name taken, a schema it cannot save."""


class PayloadTooLargeError(BusInputError):
    """A batch holding a payload over the bus's size limit: refused whole, before anything is written."""


class EventRejectedError(BusInputError):
    """The event breaks the envelope, its type is unknown, or its payload breaks the schema."""


class CatchUpRefusedError(BusInputError):
    """A catch-up from an event its topic never carried, or of a type the topic does not have."""


class HistoryQueryError(BusInputError):
    """A filter, condition or page link that cannot be used; each error names its field and the rule."""


class SchemaInvalidError(Exception):
    """A JSON Schema that cannot be saved, with the reason."""


class TokenInvalidError(Exception):
    """A bearer token that is unknown, malformed, revoked or expired; the message says which and what to do."""


class PreviewInvalidError(Exception):
    """The confirm step's token is not one this server signed for this person and topic, or too old."""


class BusUnavailableError(Exception):
    """Redis did not answer; what was accepted stays pending and the relay sends it later."""


def survivable(error: BaseException) -> bool:
    """Whether an entry's or a loop's error is survived: any exception, or a panic under jsonschema (not a cancel)."""
    return not isinstance(error, asyncio.CancelledError | KeyboardInterrupt | SystemExit | GeneratorExit)
