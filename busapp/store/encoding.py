"""The chain check's canonical JSON, encoded by CPython's C encoder built once (its one private CPython API).

``json.dumps`` and ``JSONEncoder.encode`` build the C encoder anew on every call, a third of
what encoding an entry's details costs; the chain check encodes every entry's details. Built
once here, ``audit_verify`` on PostgreSQL checks 95,000 entries/s instead of 83,000
(bench/README.md). Where the private function is missing or its signature differs, the public
encoder is used.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any


def canonical_json_encoder() -> Callable[[Any], str]:
    """``json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)``, without its per-call setup."""
    public = json.JSONEncoder(sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode
    make_encoder = getattr(json.encoder, "c_make_encoder", None)
    if make_encoder is None:
        return public
    try:
        # markers, default, string encoder, indent, key and item separators, sort_keys, skipkeys, allow_nan
        encoder = make_encoder(None, _unencodable, json.encoder.encode_basestring, None, ":", ",", True, False, True)
    except TypeError:  # another Python's private signature
        return public
    return lambda value: "".join(encoder(value, 0))


def _unencodable(value: Any) -> Any:
    """Refuse what JSON cannot hold (nothing read from JSON text gets here)."""
    raise TypeError(f"{type(value).__name__} is not JSON serializable")
