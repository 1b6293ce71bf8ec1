"""The API's JSON parser: strict UTF-8 JSON, refused with the path and the rule by ``validation.json_parse``."""

from __future__ import annotations

from collections.abc import Mapping
from typing import IO, Any

from rest_framework import status
from rest_framework.parsers import JSONParser

from busapp.api.errors import ApiError
from busapp.errors import FieldError
from busapp.validation import json_parse


class StrictJSONParser(JSONParser):
    """JSONParser that refuses what the bus cannot carry, saying where.

    Not UTF-8, not strict JSON (NaN, Infinity, numbers that overflow to them), nested over 64
    levels, NUL, lone surrogates.

    A view says how many levels of its body wrap each payload (``json_levels_around``; a batch's
    body, events and item: 3), so the 64 levels count from the payload wherever it sits.
    """

    def parse(
        self, stream: IO[Any], media_type: str | None = None, parser_context: Mapping[str, Any] | None = None
    ) -> Any:
        """The body as JSON, or 400 naming the path (or the line and column) of each problem."""
        context = parser_context or {}
        encoding = (context.get("encoding") or "utf-8").lower().replace("_", "-")
        raw = stream.read()
        if encoding not in ("utf-8", "utf8"):  # a charset the client named; JSON is UTF-8 (RFC 8259)
            try:
                raw = raw.decode(encoding)
            except (LookupError, UnicodeDecodeError) as error:
                message = f"the body is not valid JSON: it is not {encoding}: {error}"
                raise ApiError([{"path": "", "message": message}], status.HTTP_400_BAD_REQUEST) from None
        around = getattr(context.get("view"), "json_levels_around", 1)
        value, errors = json_parse(raw, around=around)
        if errors:  # at the root, the message is about the body as a whole
            shown: list[FieldError] = [
                error if error["path"] else {"path": "", "message": f"the body {error['message']}"} for error in errors
            ]
            raise ApiError(shown, status.HTTP_400_BAD_REQUEST)
        return value
