"""JSON Schema (Draft 2020-12): schemas checked when saved, payloads checked by one cached validator per version."""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import threading
from collections.abc import Iterator
from decimal import Decimal, InvalidOperation
from typing import TYPE_CHECKING, Any, TypedDict

from django.conf import settings
from django.utils import timezone
from jsonschema import Draft202012Validator, FormatChecker, validators
from jsonschema.exceptions import SchemaError
from jsonschema.exceptions import ValidationError as JsonSchemaError
from referencing import Registry, Resource
from referencing.exceptions import NoSuchResource, Unresolvable
from referencing.jsonschema import DRAFT202012

if TYPE_CHECKING:
    from busapp.models import SchemaVersion


class FieldError(TypedDict):
    """One problem with an input, at a JSON pointer path: ``{"path": "/payload/x", "message": "..."}``."""

    path: str
    message: str


class SchemaInvalidError(Exception):
    """A JSON Schema that cannot be saved, with the reason."""


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
        yield JsonSchemaError(f"{instance!r} is not a multiple of {divisor}")


# Draft 2020-12 with the decimal multipleOf; schemas are still checked against the standard metaschema.
PayloadValidator = validators.extend(Draft202012Validator, {"multipleOf": _decimal_multiple_of})
_envelope_validator = Draft202012Validator(ENVELOPE_SCHEMA)
_format_checker = FormatChecker()
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


def _refs(node: Any) -> Iterator[str]:
    """Every ``$ref`` value in a schema, depth first."""
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "$ref" and isinstance(value, str):
                yield value
            else:
                yield from _refs(value)
    elif isinstance(node, list):
        for item in node:
            yield from _refs(item)


def schema_check(schema: Any, *, uri: str) -> None:
    """Refuse a schema that is not valid Draft 2020-12 or whose ``$ref`` points outside the stored schemas."""
    if not isinstance(schema, dict):
        raise SchemaInvalidError(f"a JSON Schema here must be an object, not {type(schema).__name__}")
    try:
        Draft202012Validator.check_schema(schema)
    except SchemaError as error:
        where = "/" + "/".join(str(part) for part in error.absolute_path) if error.absolute_path else "the root"
        raise SchemaInvalidError(f"not a valid JSON Schema (Draft 2020-12) at {where}: {error.message}") from None
    registry = stored_schema_registry().with_resource(uri, DRAFT202012.create_resource(schema))
    resolver = registry.resolver(base_uri=uri)
    for ref in _refs(schema):
        try:
            resolver.lookup(ref)
        except Unresolvable:
            raise SchemaInvalidError(
                f"$ref {ref!r} does not resolve: a schema may refer only to itself and to schemas stored here"
            ) from None


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


def validator_cache_clear() -> None:
    """Forget compiled validators (tests that recreate the database use it)."""
    with _validators_lock:
        _validators.clear()


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
    return [{"path": json_pointer(prefix, parts), "message": error.message}]


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


def payload_size_error(encoded: str) -> FieldError | None:
    """An error when the payload's JSON is over the bus limit ("send IDs, not PDFs")."""
    size = len(encoded.encode())
    limit = settings.BUS_MAX_PAYLOAD_BYTES
    if size <= limit:
        return None
    return {
        "path": "/payload",
        "message": f"is {size:,} bytes; the limit is {limit:,} bytes: send IDs, not PDFs",
    }


def payload_errors(version: SchemaVersion, payload: Any, *, encoded: str | None = None) -> list[FieldError]:
    """Every way the payload breaks its size limit or schema version, with paths under ``/payload``.

    ``encoded`` is the payload's ``payload_json`` when the caller has it already.
    """
    too_big = payload_size_error(payload_json(payload) if encoded is None else encoded)
    if too_big:
        return [too_big]
    return payload_schema_errors(version, payload)


def payload_schema_errors(version: SchemaVersion, payload: Any) -> list[FieldError]:
    """Every way the payload breaks its schema version (its size already checked), with paths under ``/payload``."""
    return _sorted_errors(validator_for(version).iter_errors(payload), "/payload")


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


class BusInputError(Exception):
    """Input the bus refuses, with every problem as a path and a message."""

    def __init__(self, errors: list[FieldError]) -> None:
        self.errors = errors
        super().__init__("; ".join(f"{error['path']}: {error['message']}" for error in errors))


class TopicNotFoundError(BusInputError):
    """The named topic does not exist."""


class ApprovalRequiredError(BusInputError):
    """A sensitive topic's publish lacks a second person's approval."""


class ActionRefusedError(BusInputError):
    """An action the record's state does not allow (already decided, already replayed) or missing its reason."""


class PayloadTooLargeError(BusInputError):
    """A batch holding a payload over the bus's size limit: refused whole, before anything is written."""


class EventRejectedError(BusInputError):
    """The event breaks the envelope, its type is unknown, or its payload breaks the schema."""


_TYPE_ORDER = ("null", "boolean", "integer", "number", "string", "array", "object")


def _types(schema: dict[str, Any]) -> set[str] | None:
    """The JSON types a schema allows, or None when it does not say (any type)."""
    declared = schema.get("type")
    if declared is None:
        return None
    found = {declared} if isinstance(declared, str) else set(declared)
    if "number" in found:
        found.add("integer")  # every integer is a number
    return found


def backward_incompatibilities(old: Any, new: Any, path: str = "") -> list[str]:
    """Ways in which an event valid under ``old`` could fail ``new`` (types, required, limits, enums).

    A structural check over object properties, not a proof: it catches the changes that
    break subscribers in practice (a new required field, a narrowed type, range or enum).
    """
    if not isinstance(old, dict) or not isinstance(new, dict):
        return []
    where = path or "the payload"
    problems = []
    old_types, new_types = _types(old), _types(new)
    if new_types is not None and (old_types is None or not old_types <= new_types):
        before = "any type" if old_types is None else "/".join(t for t in _TYPE_ORDER if t in old_types)
        after = "/".join(t for t in _TYPE_ORDER if t in new_types)
        problems.append(f"{where}: type narrowed from {before} to {after}")
    for keyword, tighter in (("minimum", "raised"), ("exclusiveMinimum", "raised"), ("minLength", "raised")):
        if keyword in new and (keyword not in old or new[keyword] > old[keyword]):
            problems.append(f"{where}: {keyword} {tighter} from {old.get(keyword, 'none')} to {new[keyword]}")
    for keyword in ("maximum", "exclusiveMaximum", "maxLength"):
        if keyword in new and (keyword not in old or new[keyword] < old[keyword]):
            problems.append(f"{where}: {keyword} lowered from {old.get(keyword, 'none')} to {new[keyword]}")
    if "enum" in new and ("enum" not in old or any(value not in new["enum"] for value in old["enum"])):
        problems.append(f"{where}: enum no longer allows every value it allowed")
    newly_required = sorted(set(new.get("required", [])) - set(old.get("required", [])))
    for name in newly_required:
        problems.append(f"{path}/{name}: newly required, and events valid before may lack it")
    if new.get("additionalProperties") is False and old.get("additionalProperties") is not False:
        problems.append(f"{where}: additionalProperties now false; properties allowed before are refused")
    old_properties, new_properties = old.get("properties", {}), new.get("properties", {})
    for name, old_property in old_properties.items():
        if name in new_properties:
            problems.extend(backward_incompatibilities(old_property, new_properties[name], f"{path}/{name}"))
    return problems
