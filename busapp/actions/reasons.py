"""The one rule for every reason a person gives (a grant, a decision, a cancel, a discard): said, and kept whole."""

from __future__ import annotations

from busapp.errors import ActionRefusedError

# The longest reason kept: a paragraph for the audit log, not a document.
REASON_MAX_CHARACTERS = 1000


def reason_checked(reason: str) -> str:
    """The reason, stripped; refused when empty, over REASON_MAX_CHARACTERS, or holding a NUL character."""
    text = reason.strip()
    if not text:
        raise ActionRefusedError([{"path": "/reason", "message": "is required: say why, for the audit log"}])
    if len(text) > REASON_MAX_CHARACTERS:
        message = f"is {len(text):,} characters: keep it to {REASON_MAX_CHARACTERS:,}, the audit log keeps it whole"
        raise ActionRefusedError([{"path": "/reason", "message": message}])
    if "\x00" in text:
        raise ActionRefusedError([{"path": "/reason", "message": "cannot hold the NUL character"}])
    return text
