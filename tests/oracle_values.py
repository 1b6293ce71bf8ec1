"""The compatibility oracle's generator, alone: its worker process imports this and jsoncompat, not Django."""

from __future__ import annotations

import jsoncompat


def generated(text: str, count: int) -> list[str]:
    """Up to ``count`` values valid under the JSON schema ``text``, as JSON texts (fewer if the generator gives up)."""
    values = []
    for _ in range(count):
        try:
            values.append(jsoncompat.generate_value(text))
        except Exception:  # noqa: S112 (the generator gives up on some schemas: no value, no witness)
            continue
    return values
