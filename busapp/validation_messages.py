"""What a broken schema rule says to a person: the rule in plain words, never the value that broke it.

The value is shown where it arrived (the form's field, the dead letter's body); a message that
leaves it out is the same for every value, so dead letters with one problem share one message
and group as one cause.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from jsonschema.exceptions import ValidationError as JsonSchemaError

# JSON Schema's types, as a policy officer would name them.
TYPE_WORDS = {
    "integer": "a whole number",
    "number": "a number",
    "string": "text",
    "boolean": "true or false",
    "array": "a list",
    "object": "a group of fields",
    "null": "empty (null)",
}
# Formats the form draws, each with an example of what it takes.
FORMAT_WORDS = {
    "date": "a date like 2027-01-31",
    "date-time": "a date and time like 2027-01-31T09:00:00Z",
    "time": "a time like 09:00:00Z",
    "email": "an e-mail address",
    "uri": "a URL like https://example.gov/page",
    "uri-reference": "a URL or a path",
    "uuid": "a UUID like 0190f0c4-5d2a-7c3e-9a4b-1f2e3d4c5b6a",
    "regex": "a regular expression",
    "ipv4": "an IPv4 address like 192.0.2.1",
    "ipv6": "an IPv6 address",
    "hostname": "a host name like example.gov",
    "duration": "a duration like P1D",
}
# How many values of an enum a message lists before "…".
ENUM_SHOWN = 8


def json_text(value: Any) -> str:
    """A schema's value as JSON text: ``0``, ``0.5``, ``"married_joint"``."""
    return json.dumps(value, ensure_ascii=False)


def _counted(number: Any, noun: str) -> str:
    """``1 character``, ``3 characters``."""
    return f"{number} {noun}" + ("" if number == 1 else "s")


def _types(value: Any) -> str:
    """``a number``, or ``a number or text`` for a list of types."""
    names = value if isinstance(value, list) else [value]
    return " or ".join(TYPE_WORDS.get(name, str(name)) for name in names)


def _one_of_values(values: Any) -> str:
    """The allowed values, the first few of a long list."""
    shown = ", ".join(json_text(value) for value in list(values)[:ENUM_SHOWN])
    return shown + (", …" if len(values) > ENUM_SHOWN else "")


def _format(value: Any) -> str:
    """The format's words, or its name."""
    return FORMAT_WORDS.get(value, f"a valid {value}")


# jsonschema's own keywords, each in plain words from the schema's value (multipleOf: when the bus's
# decimal check hands a number beyond Decimal's range to jsonschema's). The keywords the bus checks
# itself (pattern, additionalProperties, uniqueItems) word their messages in busapp.validation.
_WORDED: dict[str, Callable[[Any], str]] = {
    "minimum": lambda limit: f"must be {json_text(limit)} or more",
    "maximum": lambda limit: f"must be {json_text(limit)} or less",
    "exclusiveMinimum": lambda limit: f"must be more than {json_text(limit)}",
    "exclusiveMaximum": lambda limit: f"must be less than {json_text(limit)}",
    "type": lambda value: f"must be {_types(value)}",
    "enum": lambda values: f"must be one of: {_one_of_values(values)}",
    "const": lambda value: f"must be {json_text(value)}",
    "minLength": lambda count: f"must be at least {_counted(count, 'character')} long",
    "maxLength": lambda count: f"must be at most {_counted(count, 'character')} long",
    "minItems": lambda count: f"must have at least {_counted(count, 'item')}",
    "maxItems": lambda count: f"must have at most {_counted(count, 'item')}",
    "minProperties": lambda count: f"must have at least {_counted(count, 'field')}",
    "maxProperties": lambda count: f"must have at most {_counted(count, 'field')}",
    "format": lambda value: f"must be {_format(value)}",
    "multipleOf": lambda divisor: f"must be a multiple of {json_text(divisor)}",
    "anyOf": lambda _: "matches none of the forms this field allows",
    "not": lambda _: "is a value this field does not allow",
    "contains": lambda _: "must hold at least one item of the kind asked for",
}


def plain_message(error: JsonSchemaError) -> str:
    """The error's rule in plain words, without the value; a message the bus worded itself is kept."""
    keyword = error.validator
    if keyword is None or keyword is False:  # a ``false`` schema: nothing may stand here
        return "is not allowed here"
    if keyword == "oneOf":
        many = "is valid under each of" in error.message
        return "matches more than one of the forms this field allows" if many else _WORDED["anyOf"](None)
    worded = _WORDED.get(str(keyword))
    return worded(error.validator_value) if worded is not None else error.message
