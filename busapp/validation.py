"""JSON Schema (Draft 2020-12): schemas checked when saved, payloads checked by one cached validator per version."""

from __future__ import annotations

import contextvars
import datetime as dt
import functools
import hashlib
import json
import math
import re
import threading
import urllib.parse
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from typing import TYPE_CHECKING, Any

import re2
from django.conf import settings
from django.utils import timezone
from jsonschema import Draft202012Validator, FormatChecker, validators
from jsonschema.exceptions import SchemaError
from jsonschema.exceptions import ValidationError as JsonSchemaError
from referencing import Registry, Resource
from referencing.exceptions import NoSuchResource, Unresolvable
from referencing.jsonschema import DRAFT202012
from rfc3986_validator import validate_rfc3986

from busapp.errors import FieldError, SchemaInvalidError
from busapp.fast_check import exact_answer, exact_checker, fast_checker, fast_checkers_clear, surely_valid
from busapp.validation_messages import json_text, plain_message

if TYPE_CHECKING:
    from busapp.models import SchemaVersion


# How deep arrays and objects may nest in a payload or a schema: deeper JSON is refused before anything
# recursive (json, jsonschema, the database's JSON functions) sees it.
MAX_DEPTH = 64
SCHEMA_MAX_BYTES = 256 * 1024  # a schema's canonical JSON; the largest real one is a few KiB
# At most this many problems of one value are reported: a payload of 10,000 NUL strings gets 20 lines.
VALUE_ERRORS_MAX = 20
# The start of every message json_parse gives to a text that is not JSON at all (the CLI dead-letters those).
NOT_JSON = "is not valid JSON"

# Characters no stored text may hold: NUL (PostgreSQL's text and jsonb refuse it) and lone surrogates
# (not Unicode: encoding them to UTF-8 fails). Strict UTF-8 input cannot hold a surrogate, and JSON text
# cannot hold a raw NUL in a string, so both arrive only as \u escapes.
_UNSTORABLE = re.compile("[\x00\ud800-\udfff]")
# A JSON string (the unrolled form: no nested quantifier to backtrack on) or a punctuation character.
_JSON_STRING = r'"[^"\\]*(?:\\.[^"\\]*)*"'
_JSON_TOKEN = re.compile(_JSON_STRING + r"|[\[\]{},:]")
# The escapes of NUL and of surrogates in JSON text (a valid pair matches too, and is then walked).
_SUSPECT_ESCAPE = re.compile(r"\\u(?:0000|[dD][89a-fA-F])")
# Outside its strings, JSON text is ASCII: this keeps its brackets only, each as [ or ] (a valid
# text's brackets pair up, so their kinds do not change how deep they nest).
_BRACKETS_ONLY: dict[int, str | None] = {code: None for code in range(128) if chr(code) not in "[]{}"}
_BRACKETS_ONLY.update({ord("{"): "[", ord("}"): "]"})


def printable(text: str) -> str:
    r"""Text as it can be shown and stored: NUL and lone surrogates written as their \u escapes."""
    if _UNSTORABLE.search(text) is None:
        return text
    return _UNSTORABLE.sub(lambda found: f"\\u{ord(found.group()):04x}", text)


def _unstorable_problem(text: str) -> str | None:
    """Why a string or key cannot be stored, or None."""
    found = _UNSTORABLE.search(text)
    if found is None:
        return None
    if found.group() == "\x00":
        return r"holds a NUL character (\u0000), which the database cannot store: remove it"
    code = f"\\u{ord(found.group()):04x}"
    return f"holds a lone surrogate ({code}), which is not Unicode text: send valid UTF-16 pairs or UTF-8"


def _pointer_part(key: str | int) -> str:
    """One JSON pointer segment (RFC 6901 escapes), printable."""
    return printable(str(key)).replace("~", "~0").replace("/", "~1")


def _too_deep(limit: int) -> str:
    """The message of a value nested deeper than ``limit`` levels."""
    return f"is nested deeper than {limit} levels of arrays and objects: flatten it"


def json_value_errors(value: Any, *, path: str = "/payload", max_depth: int = MAX_DEPTH) -> list[FieldError]:
    """Every way a parsed JSON value cannot go on the bus: nested over ``max_depth``, NUL, lone surrogates.

    Iterative, so a value of any depth is walked without recursion; stops after VALUE_ERRORS_MAX problems.
    """
    return _value_errors(value, path, allowed=max_depth, limit=max_depth)


def _value_errors(value: Any, path: str, *, allowed: int, limit: int) -> list[FieldError]:
    """json_value_errors, allowing ``allowed`` levels and naming ``limit`` (the levels a payload may have)."""
    errors: list[FieldError] = []
    # value, its path, the containers around it, and what is wrong with the name it has in its object
    stack: list[tuple[Any, str, int, str | None]] = [(value, path, 0, None)]
    while stack and len(errors) < VALUE_ERRORS_MAX:
        node, where, depth, name_problem = stack.pop()
        if name_problem is not None:
            errors.append({"path": where, "message": f"its name {name_problem}"})
        if isinstance(node, str):
            problem = _unstorable_problem(node)
            if problem is not None:
                errors.append({"path": where, "message": problem})
        elif isinstance(node, dict | list):
            if depth >= allowed:
                errors.append({"path": where, "message": _too_deep(limit)})
                continue
            if isinstance(node, dict):
                children = [
                    (
                        item,
                        f"{where}/{_pointer_part(key)}",
                        depth + 1,
                        _unstorable_problem(key) if isinstance(key, str) else None,
                    )
                    for key, item in node.items()
                ]
            else:
                children = [(item, f"{where}/{index}", depth + 1, None) for index, item in enumerate(node)]
            stack.extend(reversed(children))  # reversed: popped, and so reported, in document order
    return errors[:VALUE_ERRORS_MAX]


def _text_plainly_storable(text: str, allowed: int) -> bool:
    """True when a valid JSON text surely holds no NUL or lone surrogate and nests at most ``allowed`` levels.

    Text-level checks at C speed, so the walk of every value (about 1.6 us a node) runs only for suspects.
    """
    if "\\u" in text and _SUSPECT_ESCAPE.search(text) is not None:
        return False
    if not text.isascii():
        try:  # json.dumps(ensure_ascii=False) leaves a lone surrogate as it is
            text.encode()
        except UnicodeEncodeError:
            return False
    if text.count("[") + text.count("{") <= allowed:
        return True
    if "\\" in text:  # drop escaped backslashes, then escaped quotes: every quote left delimits a string
        text = text.replace("\\\\", "").replace('\\"', "")
    brackets = "".join(text.split('"')[::2]).translate(_BRACKETS_ONLY)
    for _ in range(allowed):  # each round takes away the innermost level
        brackets = brackets.replace("[]", "")
        if not brackets:
            return True
    return False


def finite_float(text: str) -> float:
    """A JSON number as a float, refused when it overflows (1e400 would go on the bus as 'Infinity')."""
    value = float(text)
    if math.isinf(value):
        raise ValueError(f"the number {text[:40]} is too large")
    return value


def _no_constant(name: str) -> Any:
    """json.loads's hook for NaN and Infinity, which are not JSON."""
    raise ValueError(f"{name} is not a JSON value")


# One decoder for every parse: json.loads with hooks builds a new one each call, which cost more
# than the tap's parse of an envelope itself (bench/README.md).
_STRICT_DECODER = json.JSONDecoder(parse_constant=_no_constant, parse_float=finite_float)


def json_parse(
    raw: bytes | str, *, path: str = "", max_depth: int = MAX_DEPTH, around: int = 0
) -> tuple[Any, list[FieldError]]:
    """Parse untrusted JSON: the value and no errors, or None and every problem as a path and a message.

    Refuses text that is not UTF-8 or not strict JSON (NaN, Infinity, numbers that overflow), values
    nested deeper than ``max_depth`` levels, NUL and lone surrogates; never raises RecursionError or a
    Unicode error. ``around`` is how many levels of the document wrap the payload (an envelope: 1, a
    batch body: 3): the limit counts from the payload. The tap calls it on every envelope it reads.
    """
    allowed = max_depth + around
    if isinstance(raw, bytes | bytearray | memoryview):
        try:
            text = bytes(raw).decode("utf-8")
        except UnicodeDecodeError as error:
            byte = bytes(raw)[error.start : error.start + 1]
            message = f"{NOT_JSON}: byte {error.start} ({byte!r}) is not UTF-8; send JSON encoded as UTF-8"
            return None, [{"path": path, "message": message}]
    else:
        text = raw
    try:
        value = _STRICT_DECODER.decode(text)
    except RecursionError:  # over Python's limit, far beyond ours: find where the limit is passed
        where, offset = _deep_path(text, path, allowed)
        return None, [{"path": where, "message": f"{_too_deep(max_depth)} (character {offset})"}]
    except ValueError as error:  # JSONDecodeError, and the hooks' refusals
        return None, [{"path": path, "message": f"{NOT_JSON}: {printable(str(error))}"}]
    if _text_plainly_storable(text, allowed):
        return value, []
    errors = _value_errors(value, path, allowed=allowed, limit=max_depth)
    return (None, errors) if errors else (value, [])


def _deep_path(text: str, path: str, allowed: int) -> tuple[str, int]:
    """The pointer and offset of the first array or object of ``text`` nested deeper than ``allowed``.

    A scan of strings and punctuation only (no recursion), for documents too deep for json.loads.
    """
    frames: list[list[Any]] = []  # per open container: [is object, key or index, next string is a key]
    for match in _JSON_TOKEN.finditer(text):
        piece = match.group()
        if piece in ("[", "{"):
            if len(frames) == allowed:
                return path + "".join(f"/{_pointer_part(frame[1])}" for frame in frames), match.start()
            frames.append([piece == "{", "" if piece == "{" else 0, piece == "{"])
        elif piece in ("]", "}"):
            if frames:
                frames.pop()
        elif frames:
            _frame_step(frames[-1], piece)
    return path, 0


def _frame_step(frame: list[Any], piece: str) -> None:
    """Move the innermost open container on by one token: to its next index, or onto the key being read."""
    if piece == ",":
        if frame[0]:
            frame[2] = True
        else:
            frame[1] += 1
    elif piece == ":":
        frame[2] = False
    elif frame[0] and frame[2]:  # an object's key
        try:
            frame[1] = json.loads(piece)
        except ValueError:
            frame[1] = piece[1:-1]


# Patterns: RE2 (google-re2) runs in time linear in the text, so no payload can make a pattern backtrack.
# It is also closer than Python's re to ECMA-262, which JSON Schema's patterns follow (\d is ASCII only).
_RE2_OPTIONS = re2.Options()
_RE2_OPTIONS.log_errors = False  # a refused pattern is reported to the person; RE2 need not log it too


@functools.lru_cache(maxsize=4096)
def regex_compiled(pattern: str) -> Any:
    """The pattern compiled by RE2, once per process (raises re2.error when RE2 refuses it)."""
    return re2.compile(pattern, _RE2_OPTIONS)


def regex_error(pattern: str) -> str | None:
    """Why RE2 refuses a pattern, or None when it compiles."""
    try:
        regex_compiled(pattern)
    except re2.error as error:
        reason = error.args[0] if error.args else error
        return reason.decode(errors="replace") if isinstance(reason, bytes) else str(reason)
    except UnicodeEncodeError:
        return "it holds a lone surrogate, which is not Unicode text"
    return None


def _regex_search(pattern: str, text: str) -> bool:
    """Whether RE2 finds the pattern in the text (a lone surrogate in either matches nothing)."""
    try:
        return regex_compiled(pattern).search(text) is not None
    except UnicodeEncodeError:
        return False


def _stored_pattern_error(pattern: str) -> JsonSchemaError | None:
    """An error for a pattern RE2 refuses (a schema saved before patterns were checked), instead of a crash."""
    reason = regex_error(pattern)
    if reason is None:
        return None
    return JsonSchemaError(
        f"the schema's pattern {printable(pattern)!r} cannot be evaluated ({reason}): fix the schema"
    )


def _re2_pattern(validator: Any, pattern: Any, instance: Any, schema: Any) -> Iterator[JsonSchemaError]:
    """``pattern``, matched by RE2."""
    if not validator.is_type(instance, "string"):
        return
    refused = _stored_pattern_error(pattern)
    if refused is not None:
        yield refused
    elif not _regex_search(pattern, instance):
        yield JsonSchemaError(f"must match the pattern {json_text(pattern)}")


def _re2_pattern_properties(
    validator: Any, pattern_properties: Any, instance: Any, schema: Any
) -> Iterator[JsonSchemaError]:
    """``patternProperties``, matched by RE2."""
    if not validator.is_type(instance, "object"):
        return
    for pattern, subschema in pattern_properties.items():
        refused = _stored_pattern_error(pattern)
        if refused is not None:
            yield refused
            continue
        for key, value in instance.items():
            if _regex_search(pattern, key):
                yield from validator.descend(value, subschema, path=key, schema_path=pattern)


def _additional_properties(validator: Any, additional: Any, instance: Any, schema: Any) -> Iterator[JsonSchemaError]:
    """``additionalProperties``, telling which properties ``patternProperties`` covers with RE2.

    jsonschema's own joins the patterns into one Python regex, and names every extra property
    in one message at the object; here each extra property is refused at its own path.
    """
    if not validator.is_type(instance, "object"):
        return
    properties = schema.get("properties", {})
    patterns = [pattern for pattern in schema.get("patternProperties", {}) if regex_error(pattern) is None]
    extras = [
        key
        for key in instance
        if key not in properties and not any(_regex_search(pattern, key) for pattern in patterns)
    ]
    if validator.is_type(additional, "object"):
        for extra in extras:
            yield from validator.descend(instance[extra], additional, path=extra)
    elif not additional and extras:
        message = "is not a field this schema allows"
        if "patternProperties" in schema:
            listed = ", ".join(json_text(each) for each in sorted(schema["patternProperties"]))
            message += f": field names must match {listed}"
        for extra in sorted(extras, key=str):
            yield JsonSchemaError(message, path=[extra])


def _json_key(value: Any) -> Any:
    """A hashable value equal for equal JSON values as JSON Schema compares them (1 == 1.0, true != 1)."""
    if isinstance(value, dict):
        return ("object", frozenset((key, _json_key(item)) for key, item in value.items()))
    if isinstance(value, list):
        return ("array", tuple(_json_key(item) for item in value))
    if isinstance(value, bool):
        return ("boolean", value)
    if isinstance(value, int | float):
        return ("number", value)
    return (type(value).__name__, value)


def _unique_items(validator: Any, unique: Any, instance: Any, schema: Any) -> Iterator[JsonSchemaError]:
    """``uniqueItems`` in linear time: jsonschema compares arrays of objects pairwise (5,000 took 22 s)."""
    if not unique or not validator.is_type(instance, "array"):
        return
    if len({_json_key(item) for item in instance}) != len(instance):
        yield JsonSchemaError("must not hold the same item twice")


# Every string of the ASCII printable range except space: what a URI may hold unescaped.
_URI_SAFE = "".join(chr(code) for code in range(0x21, 0x7F))


def _is_iri(instance: object, rule: str) -> bool:
    """An IRI is a URI once its non-ASCII characters are percent-encoded (RFC 3987, section 3.1).

    The library jsonschema uses for ``iri`` (rfc3987-syntax, a general parser) took 25 s on a 60 KB string.
    """
    if not isinstance(instance, str):
        return True
    try:
        ascii_form = urllib.parse.quote(instance, safe=_URI_SAFE)
    except UnicodeEncodeError:
        return False
    return bool(validate_rfc3986(ascii_form, rule=rule))


# A payload's ``regex`` value is compiled once, uncached (a cache would keep 4,096 of a sender's
# patterns), within 1 MiB of program: bigger ones are refused rather than compiled for long.
_RE2_VALUE_OPTIONS = re2.Options()
_RE2_VALUE_OPTIONS.log_errors = False
_RE2_VALUE_OPTIONS.max_mem = 1 << 20


def _is_re2_regex(instance: object) -> bool:
    """``format: regex``: a pattern RE2 compiles (Python's re compiler recursed out on "((((...")."""
    if not isinstance(instance, str):
        return True
    try:
        re2.compile(instance, _RE2_VALUE_OPTIONS)
    except (re2.error, UnicodeEncodeError):
        return False
    return True


# RFC 6570 URI Template expressions (level 4), matched by RE2: uri_template.validate took 2 s on 60 KB.
# Literal text between them is taken as the library took it: anything but a brace.
_PERCENT = r"%[0-9A-Fa-f]{2}"
_VARCHAR = rf"(?:[A-Za-z0-9_]|{_PERCENT})"
_VARSPEC = rf"{_VARCHAR}(?:\.?{_VARCHAR})*(?::[1-9][0-9]{{0,3}}|\*)?"
_URI_TEMPLATE = re2.compile(
    rf"^(?:[^{{}}]|\{{[+#./;?&=,!@|]?{_VARSPEC}(?:,{_VARSPEC})*\}})*$",
    _RE2_OPTIONS,
)


def _is_uri_template(instance: object) -> bool:
    """``format: uri-template``: RFC 6570's syntax."""
    if not isinstance(instance, str):
        return True
    try:
        return _URI_TEMPLATE.search(instance) is not None
    except UnicodeEncodeError:
        return False


_format_checker = FormatChecker()
_format_checker.checks("regex")(_is_re2_regex)
_format_checker.checks("uri-template")(_is_uri_template)
_format_checker.checks("iri")(lambda instance: _is_iri(instance, "URI"))
_format_checker.checks("iri-reference")(lambda instance: _is_iri(instance, "URI_reference"))


# The seed's envelope; extra keys (topic, schema_version, source, publisher) are allowed.
ENVELOPE_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["id", "type", "timestamp", "payload"],
    "properties": {
        "id": {"type": "string", "minLength": 1, "maxLength": 128},
        "type": {"type": "string", "minLength": 1},
        "timestamp": {"type": "number", "minimum": 0, "maximum": 253402300799},  # Unix seconds, up to year 9999
        "payload": {"type": "object"},
    },
}


def _decimal_multiple_of(validator: Any, divisor: Any, instance: Any, schema: Any) -> Iterator[JsonSchemaError]:
    """``multipleOf`` on the decimal numbers people type: 1234.56 is a multiple of 0.01.

    jsonschema divides binary floats (1234.56 / 0.01 = 123455.99999999999) and refused about
    one cent amount in nine; the decimal value of each number's shortest text is exact.
    """
    if not validator.is_type(instance, "number"):
        return
    try:
        remainder = Decimal(str(instance)) % Decimal(str(divisor))
    except InvalidOperation:  # beyond Decimal's range: jsonschema's own check decides
        yield from Draft202012Validator.VALIDATORS["multipleOf"](validator, divisor, instance, schema)
        return
    if remainder != 0:
        yield JsonSchemaError(f"must be a multiple of {json_text(divisor)}")


# Keyword evaluations one payload's check may take (a 64 KiB payload of 2,600 objects takes about 21,000):
# a schema whose branches repeat a recursive reference (allOf: [{properties: {a: {$ref: "#"}}}] twice)
# doubles the work at every level of the payload, 9 s at 18 levels, and is stopped here instead.
SCHEMA_CHECKS_MAX = 100_000
_checks_left: contextvars.ContextVar[list[int] | None] = contextvars.ContextVar("checks_left", default=None)


class _TooMuchWorkError(Exception):
    """A payload's check ran out of its keyword evaluations."""


def _counted(keyword: Any) -> Any:
    """A keyword function that spends one evaluation of the current payload check's allowance."""

    def counted(validator: Any, value: Any, instance: Any, schema: Any) -> Any:
        left = _checks_left.get()
        if left is not None:
            left[0] -= 1
            if left[0] < 0:
                raise _TooMuchWorkError
        return keyword(validator, value, instance, schema)

    return counted


_PAYLOAD_KEYWORDS = {
    **Draft202012Validator.VALIDATORS,
    "multipleOf": _decimal_multiple_of,
    "pattern": _re2_pattern,
    "patternProperties": _re2_pattern_properties,
    "additionalProperties": _additional_properties,
    "uniqueItems": _unique_items,
}
# Draft 2020-12 with the decimal multipleOf, patterns matched by RE2, uniqueItems in linear time and
# every keyword counted; schemas are still checked against the standard metaschema.
PayloadValidator = validators.extend(
    Draft202012Validator, {name: _counted(keyword) for name, keyword in _PAYLOAD_KEYWORDS.items()}
)
_envelope_validator = Draft202012Validator(ENVELOPE_SCHEMA)
_validators: dict[tuple[int, str], Draft202012Validator] = {}
_validators_lock = threading.Lock()


def canonical_json(value: Any) -> str:
    """JSON with sorted keys and no spaces: the same value always gives the same text."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def schema_fingerprint(schema: Any) -> str:
    """The sha256 of a schema's canonical JSON, so an unchanged file is recognised."""
    return hashlib.sha256(canonical_json(schema).encode()).hexdigest()


def schema_uri(topic: str, event_type: str, version: int) -> str:
    """The URI under which a stored schema version can be referenced with ``$ref``."""
    return f"urn:hms:schema:{topic}/{event_type}/v{version}"


def _refuse_retrieval(uri: str) -> Resource[Any]:
    """Never fetch a schema from the network: only schemas stored here resolve."""
    raise NoSuchResource(ref=uri)  # type: ignore[call-arg]


def stored_schema_registry() -> Registry[Any]:
    """A registry of every stored schema version, under its URN and its own ``$id`` if it has one."""
    from busapp.models import SchemaVersion

    resources = []
    rows = SchemaVersion.objects.values_list("event_type__topic__name", "event_type__name", "version", "schema")
    for topic, event_type, version, schema in rows:
        resource = DRAFT202012.create_resource(schema)
        resources.append((schema_uri(topic, event_type, version), resource))
        if isinstance(schema, dict) and isinstance(schema.get("$id"), str):
            resources.append((schema["$id"], resource))
    return Registry(retrieve=_refuse_retrieval).with_resources(resources)  # type: ignore[call-arg]


# Keywords whose subschemas apply to the very value their schema applies to: a cycle of references
# through these alone recurses for ever, whatever the payload ...
_SAME_VALUE_ONE: tuple[str, ...] = ("not", "if", "then", "else")
_SAME_VALUE_LIST: tuple[str, ...] = ("allOf", "anyOf", "oneOf")
_SAME_VALUE_MAP: tuple[str, ...] = ("dependentSchemas",)
# ... and those that apply to a part of it (a property, an item, a name) or only hold definitions:
# through one of these a cycle ends with the payload's depth.
_PART_ONE: tuple[str, ...] = (
    "additionalProperties",
    "unevaluatedProperties",
    "items",
    "contains",
    "propertyNames",
    "unevaluatedItems",
    "contentSchema",
)
_PART_LIST: tuple[str, ...] = ("prefixItems",)
_PART_MAP: tuple[str, ...] = ("properties", "patternProperties", "$defs", "definitions")
# How many subschemas one value may be checked against through same-value keywords alone: beyond it, a
# schema of shared allOf branches (each used twice, thirty levels down) would take years to check.
SAME_VALUE_SUBSCHEMAS_MAX = 1000
# Only the JSON Schema formats the metaschema itself uses; patterns are checked by RE2 below, with their path.
_schema_format_checker = FormatChecker(formats=["uri", "uri-reference", "iri", "iri-reference"])


def _at(pointer: str) -> str:
    """A JSON pointer as a message starts with it."""
    return pointer or "the schema's root"


def _subschemas(node: dict[str, Any], pointer: str) -> Iterator[tuple[Any, str, bool]]:
    """Each subschema of a schema: (subschema, its pointer, whether it applies to the same value)."""
    for keywords, same_value in ((_SAME_VALUE_ONE, True), (_PART_ONE, False)):
        for keyword in keywords:
            if keyword in node:
                yield node[keyword], f"{pointer}/{keyword}", same_value
    for keywords, same_value in ((_SAME_VALUE_LIST, True), (_PART_LIST, False)):
        for keyword in keywords:
            if isinstance(node.get(keyword), list):
                yield from _members(enumerate(node[keyword]), f"{pointer}/{keyword}", same_value)
    for keywords, same_value in ((_SAME_VALUE_MAP, True), (_PART_MAP, False)):
        for keyword in keywords:
            if isinstance(node.get(keyword), dict):
                yield from _members(node[keyword].items(), f"{pointer}/{keyword}", same_value)


def _members(items: Iterable[tuple[Any, Any]], pointer: str, same_value: bool) -> Iterator[tuple[Any, str, bool]]:
    """The subschemas of a keyword holding a list or an object of them, each with its pointer."""
    for name, item in items:
        yield item, f"{pointer}/{_pointer_part(name)}", same_value


@dataclass
class _SchemaGraph:
    """Every subschema a schema can reach (its own, and those of stored schemas it refers to).

    ``same_value`` holds the edges through which a subschema applies to the same value: ``$ref``,
    ``$dynamicRef``, ``allOf``, ``not`` and the like. Nodes are keyed by ``id()`` of their dict.
    """

    nodes: dict[int, tuple[dict[str, Any], str]] = field(default_factory=dict)
    same_value: dict[int, list[int]] = field(default_factory=dict)

    def label(self, key: int) -> str:
        """Where a subschema is, as a URI fragment (its pointer) or the reference that reached it."""
        pointer = self.nodes[key][1]
        return pointer if " " in pointer or pointer.startswith(("urn:", "http")) else f"#{pointer}"


def _schema_graph(schema: dict[str, Any], resolver: Any) -> _SchemaGraph:
    """Walk a schema, following every reference, without recursion."""
    graph = _SchemaGraph()
    walk: list[tuple[Any, str, Any, bool]] = [(schema, "", resolver, False)]  # node, pointer, resolver, by $ref
    referenced: list[tuple[Any, str, Any, bool]] = []  # walked after the whole document: its own pointers win
    while walk or referenced:
        node, pointer, resolver, by_ref = walk.pop() if walk else referenced.pop()
        if not isinstance(node, dict) or id(node) in graph.nodes:
            continue
        if pointer and not by_ref and isinstance(node.get("$id"), str):  # a subschema with its own base URI
            resolver = resolver.in_subresource(DRAFT202012.create_resource(node))
        graph.nodes[id(node)] = (node, pointer)
        edges = graph.same_value.setdefault(id(node), [])
        for child, child_pointer, same_value in _subschemas(node, pointer):
            if isinstance(child, dict):
                walk.append((child, child_pointer, resolver, False))
                if same_value:
                    edges.append(id(child))
        for ref, resolved in _references(node, pointer, resolver):
            edges.append(id(resolved.contents))
            referenced.append((resolved.contents, ref, resolved.resolver, True))
    _dynamic_anchors_join(graph)
    return graph


def _references(node: dict[str, Any], pointer: str, resolver: Any) -> Iterator[tuple[str, Any]]:
    """Each ``$ref`` and ``$dynamicRef`` of a subschema that lands on a schema object, with where it lands."""
    for keyword in ("$ref", "$dynamicRef"):
        ref = node.get(keyword)
        if not isinstance(ref, str):
            continue
        try:
            resolved = resolver.lookup(ref)
        except Unresolvable:
            raise SchemaInvalidError(
                f"{pointer}/{keyword}: {printable(ref)!r} does not resolve: a schema may refer only to itself"
                " and to schemas stored here"
            ) from None
        if isinstance(resolved.contents, dict):
            yield ref, resolved


def _dynamic_anchors_join(graph: _SchemaGraph) -> None:
    """A ``$dynamicRef`` may land on any ``$dynamicAnchor`` of its name in the dynamic scope: link them all."""
    anchors: dict[str, list[int]] = {}
    for key, (node, _) in graph.nodes.items():
        if isinstance(node.get("$dynamicAnchor"), str):
            anchors.setdefault(node["$dynamicAnchor"], []).append(key)
    for key, (node, _) in graph.nodes.items():
        ref = node.get("$dynamicRef")
        if isinstance(ref, str) and ref.startswith("#") and "/" not in ref:
            graph.same_value[key].extend(anchors.get(ref[1:], []))


def _same_value_check(graph: _SchemaGraph) -> None:
    """Refuse a cycle of same-value references (it recurses for ever) and an exponential same-value fan-out."""
    state: dict[int, int] = {}  # 1: on the current path, 2: done
    expanded: dict[int, int] = {}  # subschemas one value is checked against from here, this one included
    for start in graph.nodes:
        if start in state:
            continue
        path, pending = [start], [iter(graph.same_value.get(start, []))]
        state[start] = 1
        while pending:
            nxt = next(pending[-1], None)
            if nxt is None:
                done = path.pop()
                pending.pop()
                state[done] = 2
                expanded[done] = 1 + sum(expanded[child] for child in graph.same_value.get(done, []))
                if expanded[done] > SAME_VALUE_SUBSCHEMAS_MAX:
                    raise SchemaInvalidError(
                        f"{_at(graph.nodes[done][1])}: one value would be checked against more than "
                        f"{SAME_VALUE_SUBSCHEMAS_MAX:,} subschemas through $ref, allOf, anyOf, oneOf and the like:"
                        " refer to shared definitions once, not in branches that repeat them"
                    )
                continue
            if state.get(nxt) == 1:
                chain = " -> ".join(graph.label(key) for key in [*path[path.index(nxt) :], nxt])
                raise SchemaInvalidError(
                    f"{_at(graph.nodes[nxt][1])}: $ref cycle with no keyword between ({chain}): checking any"
                    " payload would recurse for ever; a schema may refer back to itself only under properties,"
                    " items or another keyword that moves into the payload"
                )
            if nxt not in state:
                state[nxt] = 1
                path.append(nxt)
                pending.append(iter(graph.same_value.get(nxt, [])))


def _patterns_check(graph: _SchemaGraph) -> None:
    """Refuse a ``pattern`` or ``patternProperties`` name that RE2 refuses, and patterns jsonschema would run itself."""
    for key, (node, pointer) in graph.nodes.items():
        found = [(f"{pointer}/pattern", node["pattern"])] if isinstance(node.get("pattern"), str) else []
        if isinstance(node.get("patternProperties"), dict):
            found += [(f"{pointer}/patternProperties/{_pointer_part(p)}", p) for p in node["patternProperties"]]
        for where, pattern in found:
            reason = regex_error(pattern)
            shown = printable(pattern if len(pattern) <= 80 else pattern[:80] + "...")
            if reason is not None:
                raise SchemaInvalidError(
                    f"{where}: {shown!r} is not allowed: payloads are matched by RE2, a linear-time engine, which"
                    f" refuses it ({reason}); write it without backreferences or lookaround"
                )
            if nested_repetition(pattern):
                raise SchemaInvalidError(
                    f"{where}: {shown!r} is not allowed: a repeated group holds a repetition, like (a+)+, which the"
                    " backtracking engines subscribers validate with (JavaScript, Python's re, Java) can take"
                    " exponential time over; repeat the group's contents once, e.g. (a+)+ as a+"
                )
        if "unevaluatedProperties" in node:
            _unevaluated_check(graph, key)


def nested_repetition(pattern: str) -> bool:
    r"""True when a group repeated without bound holds a repetition without bound: star height over 1.

    The rule of safe-regex (npm), the usual lint for catastrophic backtracking: ``(a+)+``,
    ``(\w*\s?)*`` and ``((ab)*)+`` are refused; ``(ab)+``, ``a+b+`` and ``(a{1,3})+`` are not.
    """
    holds = [False]  # for each open group: whether it holds an unbounded repetition so far
    closed: bool | None = None  # the group just closed, if the last token was ``)``: did it hold one?
    position = 0
    while position < len(pattern):
        char = pattern[position]
        step, repeats = 1, False
        if char == "\\":
            step = 2
        elif char == "[":
            step = _class_length(pattern, position)
        elif char == "(":
            holds.append(False)
        elif char == ")" and len(holds) > 1:
            inner = holds.pop()
            holds[-1] = holds[-1] or inner
            position += 1
            closed = inner
            continue
        elif char in "*+":
            repeats = True
        elif char == "{" and (match := _UNBOUNDED_BRACE.match(pattern, position)):
            step, repeats = len(match.group(0)), True
        if repeats:
            if closed:
                return True
            holds[-1] = True
        closed = None
        position += step
    return False


_UNBOUNDED_BRACE = re.compile(r"\{[0-9]+,\}")


def _class_length(pattern: str, start: int) -> int:
    """How many characters the character class opening at ``start`` takes, brackets included."""
    position = start + 1
    if position < len(pattern) and pattern[position] == "^":
        position += 1
    if position < len(pattern) and pattern[position] == "]":
        position += 1
    while position < len(pattern) and pattern[position] != "]":
        position += 2 if pattern[position] == "\\" else 1
    return position + 1 - start


def _unevaluated_check(graph: _SchemaGraph, start: int) -> None:
    """Refuse ``unevaluatedProperties`` over ``patternProperties``: jsonschema matches those with Python's re."""
    seen, todo = {start}, [start]
    while todo:
        key = todo.pop()
        node = graph.nodes[key][0]
        if "patternProperties" in node:
            raise SchemaInvalidError(
                f"{_at(graph.nodes[start][1])}/unevaluatedProperties: is not allowed together with the"
                f" patternProperties at {graph.label(key)}: the validator would match those patterns with a"
                " backtracking engine; use additionalProperties instead"
            )
        for nxt in graph.same_value.get(key, []):
            if nxt not in seen and nxt in graph.nodes:
                seen.add(nxt)
                todo.append(nxt)


def schema_check(schema: Any, *, uri: str, stored: Registry[Any] | None = None) -> None:
    """Refuse a schema that could not be saved or could hurt; each refusal names the JSON pointer and the rule.

    Not valid Draft 2020-12, over 256 KiB, nested over 64 levels, holding NUL or lone surrogates, a ``$ref``
    outside the stored schemas (``stored``: ``stored_schema_registry()``, read here if not given)
    or in a cycle with no keyword between, or a pattern RE2 refuses.
    """
    if not isinstance(schema, dict):
        raise SchemaInvalidError(f"a JSON Schema here must be an object, not {type(schema).__name__}")
    problems = json_value_errors(schema, path="")
    if problems:
        raise SchemaInvalidError(f"{_at(problems[0]['path'])}: {problems[0]['message']}")
    size = len(canonical_json(schema).encode())
    if size > SCHEMA_MAX_BYTES:
        raise SchemaInvalidError(
            f"{_at('')}: the schema is {size / 1024:,.0f} KiB; a schema may be at most {SCHEMA_MAX_BYTES // 1024} KiB"
        )
    try:
        Draft202012Validator.check_schema(schema, format_checker=_schema_format_checker)
    except SchemaError as error:
        where = "/" + "/".join(str(part) for part in error.absolute_path) if error.absolute_path else "the root"
        raise SchemaInvalidError(f"not a valid JSON Schema (Draft 2020-12) at {where}: {error.message}") from None
    resource = DRAFT202012.create_resource(schema)
    registry = (stored or stored_schema_registry()).with_resource(uri, resource)
    if isinstance(schema.get("$id"), str):
        registry = registry.with_resource(schema["$id"], resource)
    graph = _schema_graph(schema, registry.resolver(base_uri=uri))
    _same_value_check(graph)
    _patterns_check(graph)


def validator_for(version: SchemaVersion) -> Draft202012Validator:
    """The compiled validator of a schema version, built once per process (versions never change)."""
    key = (version.pk, version.fingerprint)
    validator = _validators.get(key)
    if validator is None:
        with _validators_lock:
            validator = _validators.get(key)
            if validator is None:
                validator = PayloadValidator(
                    version.schema,
                    registry=stored_schema_registry(),
                    format_checker=_format_checker,
                )
                _validators[key] = validator
    return validator


def schema_acceptor(schema: Any) -> Callable[[Any], bool]:
    """Whether a schema without ``$ref``s accepts a value, checked as payloads are (RE2, decimal multipleOf)."""
    return PayloadValidator(schema, format_checker=_format_checker).is_valid  # type: ignore[no-any-return]


def validator_cache_clear() -> None:
    """Forget compiled validators (tests that recreate the database use it)."""
    with _validators_lock:
        _validators.clear()
    fast_checkers_clear()


def json_pointer(prefix: str, parts: Any) -> str:
    """A JSON pointer from path parts, escaping '~' and '/' as RFC 6901 says."""
    escaped = (str(part).replace("~", "~0").replace("/", "~1") for part in parts)
    return "/".join([prefix, *escaped]) if prefix else "/" + "/".join(escaped)


def _field_errors(error: JsonSchemaError, prefix: str) -> list[FieldError]:
    """Turn a jsonschema error into paths and messages; each missing property is reported at its own path."""
    parts = list(error.absolute_path)
    if error.validator == "required" and isinstance(error.instance, dict):
        missing = [name for name in error.validator_value if name not in error.instance]
        if missing:  # jsonschema words one error per missing name; every name gets its own path here
            return [
                {"path": json_pointer(prefix, [*parts, name]), "message": "is required but missing"} for name in missing
            ]
    return [{"path": json_pointer(prefix, parts), "message": plain_message(error)}]


def _sorted_errors(errors: Iterator[JsonSchemaError], prefix: str) -> list[FieldError]:
    """All errors, in path order, each once."""
    found = sorted(
        (field_error for error in errors for field_error in _field_errors(error, prefix)),
        key=lambda e: (e["path"], e["message"]),
    )
    unique: list[FieldError] = []
    for error in found:
        if not unique or unique[-1] != error:
            unique.append(error)
    return unique


def effective_at_error(moment: dt.datetime) -> FieldError | None:
    """An error when a scheduled publish's time has already passed (empty means "at once" instead)."""
    if moment > timezone.now():
        return None
    return {"path": "/effective_at", "message": "is in the past: leave it empty to publish at once"}


def payload_json(payload: Any) -> str:
    """The payload's compact JSON, as it goes on the bus inside the envelope."""
    return json.dumps(payload, separators=(",", ":"), ensure_ascii=False)


def payload_encoded(payload: Any) -> tuple[str, list[FieldError]]:
    """The payload's ``payload_json``, or "" and every way it cannot go on the bus (depth, NUL, surrogates)."""
    try:
        encoded = payload_json(payload)
    except (RecursionError, ValueError):  # deeper than json.dumps goes, or a value that refers to itself
        found = json_value_errors(payload)
        return "", found or [{"path": "/payload", "message": "cannot be written as JSON"}]
    if _text_plainly_storable(encoded, MAX_DEPTH):
        return encoded, []
    errors = json_value_errors(payload)
    return ("", errors) if errors else (encoded, [])


def payload_size_error(encoded: str) -> FieldError | None:
    """An error when the payload's JSON is over the bus limit ("send IDs, not PDFs") or is not Unicode text."""
    try:
        size = len(encoded.encode())
    except UnicodeEncodeError as error:  # json_value_errors names the string; this is the last line of defence
        return {"path": "/payload", "message": f"character {error.start} {_unstorable_problem(encoded[error.start])}"}
    limit = settings.BUS_MAX_PAYLOAD_BYTES
    if size <= limit:
        return None
    return {
        "path": "/payload",
        "message": f"is {size:,} bytes; the limit is {limit:,} bytes: send IDs, not PDFs",
    }


def payload_errors(version: SchemaVersion, payload: Any, *, encoded: str | None = None) -> list[FieldError]:
    """Every way the payload breaks the bus's rules (depth, NUL, surrogates, size) or its schema version.

    Paths are under ``/payload``. ``encoded`` is the payload's ``payload_json`` when the caller has it
    already, from ``payload_encoded``.
    """
    if encoded is None:
        encoded, unstorable = payload_encoded(payload)
        if unstorable:
            return unstorable
    too_big = payload_size_error(encoded)
    if too_big:
        return [too_big]
    return payload_schema_errors(version, payload, encoded=encoded)


def payload_schema_errors(version: SchemaVersion, payload: Any, *, encoded: str | None = None) -> list[FieldError]:
    """Every way the payload breaks its schema version (its size already checked), with paths under ``/payload``.

    With the payload's ``payload_json`` (``encoded``), a plain schema's valid payload is told by
    jsonschema-rs (``busapp.fast_check``); the rest is checked here. The check takes at most
    SCHEMA_CHECKS_MAX keyword evaluations, so no schema holds a thread for long.
    """
    if encoded is not None:
        checker = fast_checker((version.pk, version.fingerprint), version.schema)
        if surely_valid(checker, payload, encoded):
            return []
    return _bounded_errors(validator_for(version), payload, version.version)


class DraftChecker:
    """Payloads against a schema not saved yet (a dry run): yes or no in Rust where that answer is ours, else Python."""

    def __init__(self, schema: Any, *, stored: Registry[Any], number: int) -> None:
        self.validator = PayloadValidator(schema, registry=stored, format_checker=_format_checker)
        self.number = number
        self.rust = exact_checker(schema, keywords=_RUST_KEYWORDS, format_of=_format_conforms)

    def accepts(self, payload: Any, encoded: str) -> bool:
        """Whether the payload (``encoded``: its JSON text, or any text holding it) is valid under the draft."""
        answer = exact_answer(self.rust, payload, encoded)
        return not self.errors(payload) if answer is None else answer

    def errors(self, payload: Any) -> list[FieldError]:
        """Every error, with its path, bounded like any publish's check."""
        return _bounded_errors(self.validator, payload, self.number)


# Answers one exact checker keeps per keyword and format: a dry run meets the same codes and dates again and again.
_REMEMBERED = 4096


def _format_conforms(name: str) -> Callable[[str], bool]:
    """Our check of one format, for jsonschema-rs to call, remembering its answers for the texts it met."""
    seen: dict[str, bool] = {}

    def conforms(text: str) -> bool:
        answer = seen.get(text)
        if answer is None:
            answer = _format_checker.conforms(text, name)
            if len(seen) < _REMEMBERED:
                seen[text] = answer
        return answer

    return conforms


class _RustKeyword:
    """One of our keyword functions as a jsonschema-rs custom keyword (RE2 patterns, decimal multipleOf ...)."""

    function: Callable[..., Iterator[JsonSchemaError]]

    def __init__(self, parent_schema: Any, value: Any, schema_path: Any) -> None:
        self.parent_schema, self.value = parent_schema, value
        self.refusals: dict[tuple[type, Any], str] = {}  # by the value's type too: True == 1 in Python

    def validate(self, instance: Any) -> None:
        """Raise for the first error our function finds (an answer for a string or number is remembered)."""
        key = (type(instance), instance) if isinstance(instance, str | int | float) else None
        if key is not None and key in self.refusals:
            if self.refusals[key]:
                raise ValueError(self.refusals[key])
            return
        message = next((error.message for error in self._errors(instance)), "")
        if key is not None and len(self.refusals) < _REMEMBERED:
            self.refusals[key] = message
        if message:
            raise ValueError(message)

    def _errors(self, instance: Any) -> Iterator[JsonSchemaError]:
        """Our function's errors for the value."""
        return type(self).function(_TYPES, self.value, instance, self.parent_schema)


_TYPES = Draft202012Validator({})  # the type checks our keyword functions ask their validator for
_RUST_KEYWORDS: dict[str, type] = {
    name: type(f"Rust_{name}", (_RustKeyword,), {"function": staticmethod(function)})
    for name, function in (
        ("pattern", _re2_pattern),
        ("multipleOf", _decimal_multiple_of),
        ("uniqueItems", _unique_items),
    )
}


def _bounded_errors(validator: Draft202012Validator, payload: Any, number: int) -> list[FieldError]:
    """The validator's errors for a payload, refused instead when they would take too much work or recurse."""
    allowance = _checks_left.set([SCHEMA_CHECKS_MAX])
    try:
        return _sorted_errors(validator.iter_errors(payload), "/payload")
    except _TooMuchWorkError:
        message = (
            f"needs more than {SCHEMA_CHECKS_MAX:,} schema checks under version {number}: the schema"
            " repeats a recursive reference, or the payload is too large for it; send IDs, not documents"
        )
        return [{"path": "/payload", "message": message}]
    except BaseException as error:  # a $ref cycle in a version saved before schema_check refused them
        # Python's limit may be hit inside referencing's Rust maps, which re-raise it as pyo3's
        # PanicException, a BaseException; anything else goes on up.
        if not isinstance(error, RecursionError) and type(error).__name__ != "PanicException":
            raise
        message = (
            f"cannot be checked: schema version {number} refers to itself with no keyword between"
            " (a $ref cycle) and recurses for ever; a bus admin must add a fixed version"
        )
        return [{"path": "/payload", "message": message}]
    finally:
        _checks_left.reset(allowance)


def envelope_errors(envelope: Any) -> list[FieldError]:
    """Every way a received envelope breaks the seed's shape ``{id, type, timestamp, payload}``."""
    if _envelope_fits(envelope):
        return []
    return _sorted_errors(_envelope_validator.iter_errors(envelope), "")


def _envelope_fits(envelope: Any) -> bool:
    """True for an envelope ENVELOPE_SCHEMA accepts, checked directly (the tap checks every envelope it reads).

    Only a quick yes: whatever this does not accept, jsonschema checks and explains.
    """
    if not isinstance(envelope, dict):
        return False
    envelope_id, event_type, timestamp = envelope.get("id"), envelope.get("type"), envelope.get("timestamp")
    return (
        isinstance(envelope_id, str)
        and 1 <= len(envelope_id) <= 128
        and isinstance(event_type, str)
        and event_type != ""
        and isinstance(timestamp, int | float)
        and not isinstance(timestamp, bool)
        and 0 <= timestamp <= 253402300799
        and isinstance(envelope.get("payload"), dict)
    )


# Keywords that never refuse a value: identifiers, comments, definitions (read only through a $ref), notes.
SCHEMA_ANNOTATIONS = frozenset(
    {
        "$schema",
        "$id",
        "$anchor",
        "$dynamicAnchor",
        "$comment",
        "$vocabulary",
        "$defs",
        "definitions",
        "title",
        "description",
        "default",
        "examples",
        "deprecated",
        "readOnly",
        "writeOnly",
        "contentEncoding",
        "contentMediaType",
        "contentSchema",
    }
)


def schema_types(schema: dict[str, Any]) -> set[str] | None:
    """The JSON types a schema allows, or None when it does not say (any type)."""
    declared = schema.get("type")
    if declared is None:
        return None
    found = {declared} if isinstance(declared, str) else set(declared)
    if "number" in found:
        found.add("integer")  # every integer is a number
    return found
