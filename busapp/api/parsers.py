"""The API's JSON parser: strict JSON, and no number too large to be written back as JSON."""

from __future__ import annotations

import codecs
import json
import math
from collections.abc import Mapping
from typing import IO, Any

from rest_framework.exceptions import ParseError
from rest_framework.parsers import JSONParser
from rest_framework.utils.json import strict_constant


def finite_float(text: str) -> float:
    """A JSON number as a float, refused when it overflows (1e400 would go on the bus as 'Infinity')."""
    value = float(text)
    if math.isinf(value):
        raise ValueError(f"the number {text[:40]} is too large")
    return value


class StrictJSONParser(JSONParser):
    """JSONParser that refuses NaN, Infinity and numbers that overflow to them, saying where."""

    def parse(
        self, stream: IO[Any], media_type: str | None = None, parser_context: Mapping[str, Any] | None = None
    ) -> Any:
        """The body as JSON, or 400 naming the line and column of the first problem."""
        encoding = (parser_context or {}).get("encoding") or "utf-8"
        try:
            text = codecs.getreader(encoding)(stream).read()
            return json.loads(text, parse_constant=strict_constant, parse_float=finite_float)
        except ValueError as error:  # UnicodeDecodeError and JSONDecodeError are ValueErrors
            raise ParseError(str(error)) from None
