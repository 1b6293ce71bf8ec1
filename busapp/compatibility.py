"""Schema compatibility, by Confluent's JSON Schema rules: which values one version accepts that another refuses.

A change breaks *backward* compatibility when a payload valid under the earlier version may be
refused by the new one (events already on the bus, publishers still on the earlier version), and
*forward* compatibility when a payload valid under the new version may be refused by the earlier
one (subscribers still validating with it). Modes and the content models (open, closed, partially
open objects) follow Confluent Schema Registry; each finding names the JSON pointer, a rule in
Confluent's words where it has one, what changed and whom it breaks.

The checker is sound under the STRICT policy: it never calls a change compatible when some value
tells the two versions apart. Where it cannot decide (two different regular expressions, a new
``not``), it says so and counts a break. The LENIENT policy allows what Confluent's lenient policy
allows: an optional property added to an open object (a value already carrying that name with
another shape would then be refused: the type's owners accept that risk).

No library does this for Draft 2020-12 with reasons (``jsonsubschema`` knows Draft 4 and says
only yes or no; ``jsoncompat`` says which role breaks, not where or why); ``jsoncompat`` is the
independent oracle of tests/test_compatibility.py.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from fractions import Fraction
from typing import Any

from referencing import Registry
from referencing.exceptions import Unresolvable
from referencing.jsonschema import DRAFT202012

from busapp.models import CompatibilityMode, CompatibilityPolicy
from busapp.validation import SCHEMA_ANNOTATIONS, regex_compiled, schema_acceptor, schema_types

BACKWARD_BREAKS = "events valid under v{version} are refused (events already sent, publishers still on it)"
FORWARD_BREAKS = "subscribers still validating with v{version} refuse events valid under the new version"


@dataclass(frozen=True)
class Finding:
    """One way two versions differ on some value: where (a JSON pointer into the schema), the rule, what changed."""

    pointer: str
    rule: str
    change: str
    breaks: str = ""
    undecided: bool = False

    def __str__(self) -> str:
        text = f"{self.pointer or '/'}: {self.rule}: {self.change}"
        return f"{text}: {self.breaks}" if self.breaks else text


def mode_findings(
    new: Any,
    earlier: Sequence[tuple[int, Any]],
    *,
    mode: CompatibilityMode,
    policy: CompatibilityPolicy = CompatibilityPolicy.STRICT,
    registry: Registry[Any] | None = None,
    new_uri: str = "urn:hms:schema:new",
    uri_of: Any = None,
) -> list[Finding]:
    """Every finding that stops ``new`` under ``mode``, against ``earlier`` ((number, schema), newest first).

    Non-transitive modes compare with the newest earlier version only. ``uri_of(number)`` gives an
    earlier version's URI, under which its relative ``$ref``s resolve in ``registry``.
    """
    if mode == CompatibilityMode.NONE or not earlier:
        return []
    if mode == CompatibilityMode.DISABLED:
        return [Finding("", "MODE_DISABLED", "this event type takes no new versions", "nobody: nothing is saved")]
    compared = earlier if mode.endswith("_TRANSITIVE") else earlier[:1]
    registry = registry or Registry()
    findings: list[Finding] = []
    for number, schema in compared:
        old_uri = uri_of(number) if uri_of else f"urn:hms:schema:earlier/v{number}"
        pair = _Pair(registry, policy, old_uri, schema, new_uri, new)
        if mode.startswith(("BACKWARD", "FULL")):
            breaks = BACKWARD_BREAKS.format(version=number)
            findings += [replace(found, breaks=breaks) for found in pair.refused(old_side="old")]
        if mode.startswith(("FORWARD", "FULL")):
            breaks = FORWARD_BREAKS.format(version=number)
            findings += [replace(found, breaks=breaks) for found in pair.refused(old_side="new")]
    return findings


def directional_findings(
    old: Any,
    new: Any,
    *,
    policy: CompatibilityPolicy,
    registry: Registry[Any],
    old_uri: str,
    new_uri: str,
) -> tuple[list[Finding], list[Finding]]:
    """What ``new`` breaks against ``old``: for writers (old events refused) and for readers (new events refused)."""
    pair = _Pair(registry, policy, old_uri, old, new_uri, new)
    return pair.refused(old_side="old"), pair.refused(old_side="new")


def refusals(
    old: Any,
    new: Any,
    *,
    policy: CompatibilityPolicy = CompatibilityPolicy.STRICT,
    registry: Registry[Any] | None = None,
) -> list[Finding]:
    """Ways a value valid under ``old`` may be refused by ``new`` (empty: ``new`` accepts all ``old`` accepts)."""
    pair = _Pair(registry or Registry(), policy, "urn:hms:schema:old", old, "urn:hms:schema:new", new)
    return pair.refused(old_side="old")


# --- the comparison ---------------------------------------------------------------------------

_TYPES = ("null", "boolean", "integer", "number", "string", "array", "object")
_ANNOTATIONS = SCHEMA_ANNOTATIONS
# Keywords the comparison understands; any other assertion that differs is a change it cannot judge.
_HANDLED = frozenset(
    {
        "type",
        "enum",
        "const",
        "minimum",
        "maximum",
        "exclusiveMinimum",
        "exclusiveMaximum",
        "multipleOf",
        "minLength",
        "maxLength",
        "pattern",
        "format",
        "properties",
        "required",
        "additionalProperties",
        "patternProperties",
        "minProperties",
        "maxProperties",
        "dependentRequired",
        "propertyNames",
        "items",
        "prefixItems",
        "minItems",
        "maxItems",
        "uniqueItems",
        "contains",
        "minContains",
        "maxContains",
        "allOf",
        "anyOf",
        "oneOf",
        "not",
        "if",
        "then",
        "else",
        "$ref",
    }
)


@dataclass(frozen=True)
class _Node:
    """A schema and the resolver its ``$ref``s resolve against."""

    schema: Any
    resolver: Any  # referencing's Resolver, where its $refs resolve

    def at(self, schema: Any) -> _Node:
        """A subschema of this one, resolved in the same place."""
        return _Node(schema, self.resolver)


class _Pair:
    """Two versions of a schema, compared one way or the other."""

    def __init__(
        self, registry: Registry[Any], policy: CompatibilityPolicy, old_uri: str, old: Any, new_uri: str, new: Any
    ) -> None:
        registry = registry.with_resources(
            [(old_uri, DRAFT202012.create_resource(old)), (new_uri, DRAFT202012.create_resource(new))]
        )
        self.registry = registry
        self.policy = policy
        self.old = _Node(old, registry.resolver(base_uri=old_uri))
        self.new = _Node(new, registry.resolver(base_uri=new_uri))

    def refused(self, *, old_side: str) -> list[Finding]:
        """Values valid under one side that the other refuses: old to new (backward), or new to old (forward)."""
        accepted, refusing = (self.old, self.new) if old_side == "old" else (self.new, self.old)
        return _Comparison(self.registry, self.policy).refusals(accepted, refusing, "")


class _Comparison:
    """One directional comparison: which values ``old`` accepts that ``new`` refuses, keyword by keyword."""

    def __init__(self, registry: Registry[Any], policy: CompatibilityPolicy) -> None:
        self.registry = registry
        self.policy = policy
        self.assumed: set[tuple[int, int]] = set()

    # -- entry ------------------------------------------------------------------------------

    def refusals(self, old: _Node, new: _Node, pointer: str) -> list[Finding]:
        """Findings at ``pointer`` (in the new schema) for values ``old`` accepts and ``new`` may refuse."""
        if _accepts_everything(new.schema) or old.schema is False:
            return []
        if new.schema is False:
            return [Finding(pointer, "SCHEMA_REMOVED", "now refuses every value")]
        old_schema = {} if old.schema is True else old.schema
        if not isinstance(old_schema, dict) or not isinstance(new.schema, dict):
            return [Finding(pointer, "SCHEMA_INVALID", "not a schema the checker can read", undecided=True)]
        if _same(old_schema, new.schema) and not _references(old_schema):
            return []  # the same keywords with nothing resolved elsewhere: the same values (most of a new version)
        key = (id(old_schema), id(new.schema))
        if key in self.assumed:  # a recursive schema met again: values are finite, so this holds
            return []
        self.assumed.add(key)
        try:
            return self._compared(old.at(old_schema), new, pointer)
        finally:
            self.assumed.discard(key)

    def _compared(self, old: _Node, new: _Node, pointer: str) -> list[Finding]:
        """Combinators and references first, then the keywords of one plain schema against another."""
        if "$ref" in new.schema:
            target = self._resolved(new, pointer)
            if isinstance(target, Finding):
                return [target]
            rest = {key: value for key, value in new.schema.items() if key != "$ref"}
            return self.refusals(old, target, f"{pointer}/$ref") + self.refusals(old, new.at(rest), pointer)
        if "allOf" in new.schema:
            rest = {key: value for key, value in new.schema.items() if key != "allOf"}
            found = self.refusals(old, new.at(rest), pointer)
            for index, branch in enumerate(new.schema["allOf"]):
                found += self.refusals(old, new.at(branch), f"{pointer}/allOf/{index}")
            return found
        expanded = self._old_expanded(old, pointer)
        if isinstance(expanded, Finding):
            return [expanded]
        if len(expanded) != 1 or expanded[0].schema is not old.schema:
            found = []
            for part in expanded:
                found += self.refusals(part, new, pointer)
            return _unique(found)
        return self._plain(old, new, pointer)

    def _resolved(self, node: _Node, pointer: str) -> _Node | Finding:
        """The schema a ``$ref`` names, with the resolver of where it lives."""
        try:
            found = node.resolver.lookup(node.schema["$ref"])
        except (Unresolvable, TypeError):
            return Finding(pointer, "REFERENCE_UNRESOLVED", f"$ref {node.schema['$ref']!r} names no stored schema")
        return _Node(found.contents, found.resolver)

    def _old_expanded(self, old: _Node, pointer: str) -> list[_Node] | Finding:
        """``old`` as alternatives each without ``$ref``, ``allOf``, ``anyOf`` or ``oneOf``: what its values can be.

        Conjunctions are merged where their keywords do not overlap; otherwise a part is dropped,
        which lets more values in (sound: more to check, never fewer). Alternatives of ``anyOf`` and
        ``oneOf`` each become a case; several types become a case each.
        """
        node = old
        if "$ref" in old.schema:
            dereferenced = self._old_dereferenced(old, pointer)
            if dereferenced is None or isinstance(dereferenced, Finding):
                return [] if dereferenced is None else dereferenced
            node = dereferenced
        schema = dict(node.schema)
        for branch in schema.pop("allOf", []):
            merged = _merged(schema, branch) if isinstance(branch, dict) else None
            schema = merged if merged is not None else schema
        alternatives = _alternatives_of(schema)
        if len(alternatives) == 1 and alternatives[0] == old.schema:
            return [old]
        return [node.at(alternative) for alternative in alternatives]

    def _old_dereferenced(self, old: _Node, pointer: str) -> _Node | Finding | None:
        """``old`` with what its ``$ref`` names merged in (None: it names ``false``, so no value is valid).

        The merge keeps one resolver, so it is made only when the other side holds no ``$ref``;
        otherwise the reference is dropped, which lets more values in.
        """
        target = self._resolved(old, pointer)
        if isinstance(target, Finding):
            return target
        rest = {key: value for key, value in old.schema.items() if key != "$ref"}
        if target.schema is False:
            return None
        if target.schema is True:
            return old.at(rest)
        merged = _merged(rest, target.schema) if isinstance(target.schema, dict) else None
        if merged is not None and not _references(_assertions(rest)):  # $defs are only read through a $ref
            return target.at(merged)
        if merged is not None and not _references(_assertions(target.schema)):
            return old.at(merged)
        return old.at(rest)

    # -- one plain schema against another -----------------------------------------------------

    def _plain(self, old: _Node, new: _Node, pointer: str) -> list[Finding]:
        """``old`` holds no combinator of its own here; ``new`` may still hold ``anyOf``, ``oneOf``, ``not``."""
        finite = self._finite_values(old)
        if finite is not None:
            return self._values_refused(finite, old, new, pointer)
        found = self._combinators(old, new, pointer)
        found += self._unknown_keywords(old.schema, new.schema, pointer)
        found += self._types(old.schema, new.schema, pointer)
        if "enum" in new.schema or "const" in new.schema:
            allowed = new.schema["enum"] if "enum" in new.schema else [new.schema["const"]]
            rule = "ENUM_ARRAY_ADDED" if "enum" in new.schema else "CONST_ADDED"
            found.append(Finding(pointer, rule, f"only {_listed(allowed)} allowed now, any value before"))
        shared = _shared_types(old.schema, new.schema)
        if shared & {"integer", "number"}:
            found += _number_limits(old.schema, new.schema, pointer)
        if "string" in shared:
            found += _string_limits(old.schema, new.schema, pointer)
        if "array" in shared:
            found += self._arrays(old, new, pointer)
        if "object" in shared:
            found += self._objects(old, new, pointer)
        return found

    def _combinators(self, old: _Node, new: _Node, pointer: str) -> list[Finding]:
        """The new schema's ``anyOf``, ``oneOf``, ``not`` and ``if``/``then``/``else``."""
        found: list[Finding] = []
        for keyword in ("anyOf", "oneOf"):
            if keyword in new.schema:
                found += self._alternatives(old, new, keyword, pointer)
        negated = new.schema.get("not")
        if negated is not None and negated != old.schema.get("not") and not self._disjoint(old, new.at(negated)):
            found.append(
                Finding(f"{pointer}/not", "NOT_TYPE_NARROWED", "a new 'not' may refuse values", undecided=True)
            )
        conditional = {key: new.schema[key] for key in ("if", "then", "else") if key in new.schema}
        if conditional and conditional != {key: old.schema.get(key) for key in conditional}:
            # Sound without reading 'if': a value valid under both branches passes whichever applies.
            refusing = [
                key
                for key in ("then", "else")
                if key in conditional and self.refusals(old, new.at(conditional[key]), pointer)
            ]
            if refusing:
                change = f"'if' with a '{refusing[0]}' that may refuse values"
                found.append(Finding(f"{pointer}/if", "CONDITIONAL_CHANGED", change, undecided=True))
        return found

    def _finite_values(self, old: _Node) -> list[Any] | None:
        """The values ``old`` can take when there are few (an enum, a const, null or a boolean); else None."""
        schema = old.schema
        if "const" in schema:
            return [schema["const"]]
        if "enum" in schema:
            return list(schema["enum"])
        declared = schema.get("type")
        kinds = {declared} if isinstance(declared, str) else set(declared or ())
        if kinds and kinds <= {"null", "boolean"}:
            return ([None] if "null" in kinds else []) + ([False, True] if "boolean" in kinds else [])
        return None

    def _values_refused(self, values: list[Any], old: _Node, new: _Node, pointer: str) -> list[Finding]:
        """Exact: the values ``old`` allows, each validated against ``new``."""
        # A value whose validity a $ref hides counts as allowed before and refused now: the safe side.
        before, after = _validity(old), _validity(new)
        refused = [value for value in values if before(value) is not False and after(value) is not True]
        if not refused:
            return []
        rule = (
            "ENUM_ARRAY_NARROWED"
            if "enum" in new.schema
            else "TYPE_NARROWED"
            if "type" in new.schema
            else "VALUE_REFUSED"
        )
        return [Finding(pointer, rule, f"{_listed(refused)} allowed before, refused now")]

    def _alternatives(self, old: _Node, new: _Node, keyword: str, pointer: str) -> list[Finding]:
        """``old`` within one branch of the new ``anyOf``/``oneOf`` (for ``oneOf``, apart from every other)."""
        branches = new.schema[keyword]
        for index, branch in enumerate(branches):
            if self.refusals(old, new.at(branch), f"{pointer}/{keyword}/{index}"):
                continue
            if keyword == "anyOf":
                return []
            others = [other for position, other in enumerate(branches) if position != index]
            if all(self._disjoint(old, new.at(other)) for other in others):
                return []
            return [
                Finding(
                    f"{pointer}/oneOf",
                    "SUM_TYPE_UNDECIDED",
                    f"values of branch {index} may now match another branch too, and oneOf refuses them",
                    undecided=True,
                )
            ]
        rule = "SUM_TYPE_NARROWED" if keyword == "oneOf" else "COMBINED_TYPE_NARROWED"
        return [Finding(f"{pointer}/{keyword}", rule, f"a value valid before matches none of the {keyword} branches")]

    def _disjoint(self, old: _Node, other: _Node) -> bool:
        """True when no value valid under ``old`` is valid under ``other`` (proved by type, values or a tag)."""
        finite = self._finite_values(old)
        if finite is not None:
            valid_before, valid_there = _validity(old), _validity(other)
            return all(valid_there(value) is False for value in finite if valid_before(value) is not False)
        if other.schema is False:
            return True
        if not isinstance(other.schema, dict) or "$ref" in other.schema:
            return False
        mine, theirs = schema_types(old.schema), schema_types(other.schema)
        if mine is not None and theirs is not None and not mine & theirs:
            return True
        for name, tag in other.schema.get("properties", {}).items():
            if name in old.schema.get("required", []) and name in other.schema.get("required", []):
                own = old.schema.get("properties", {}).get(name)
                if isinstance(own, dict) and self._disjoint(old.at(own), other.at(tag)):
                    return True
        return False

    # -- objects and arrays ---------------------------------------------------------------------

    def _objects(self, old: _Node, new: _Node, pointer: str) -> list[Finding]:
        """Properties, the content model, required names, counts and dependencies."""
        old_schema, new_schema = old.schema, new.schema
        old_properties, new_properties = old_schema.get("properties", {}), new_schema.get("properties", {})
        new_required = set(new_schema.get("required", []))
        found = [
            Finding(f"{pointer}/required", "REQUIRED_ATTRIBUTE_ADDED", f"{name!r} is required now")
            for name in sorted(new_required - set(old_schema.get("required", [])))
        ]
        for name, schema in new_properties.items():
            where = f"{pointer}/properties/{_escaped(name)}"
            if name in old_properties:
                found += self.refusals(old.at(old_properties[name]), new.at(schema), where)
            elif self.policy == CompatibilityPolicy.STRICT or name in new_required or not _open_for(old_schema, name):
                found += self._property_added(old, new.at(schema), name, where)
        for name, schema in old_properties.items():
            if name not in new_properties:
                found += self._property_removed(old.at(schema), new, name, f"{pointer}/properties")
        found += self._other_properties(old, new, pointer)
        found += _count_limits(old_schema, new_schema, pointer, "Properties", "PROPERTIES")
        for name, needs in new_schema.get("dependentRequired", {}).items():
            if not set(needs) <= set(old_schema.get("dependentRequired", {}).get(name, [])):
                where = f"{pointer}/dependentRequired/{_escaped(name)}"
                found.append(Finding(where, "DEPENDENCY_ADDED", f"{name!r} needs {needs}"))
        if "propertyNames" in new_schema and new_schema["propertyNames"] != old_schema.get("propertyNames"):
            names = old.at(old_schema.get("propertyNames", {"type": "string"}))
            found += self.refusals(names, new.at(new_schema["propertyNames"]), f"{pointer}/propertyNames")
        return found

    def _property_added(self, old: _Node, added: _Node, name: str, where: str) -> list[Finding]:
        """A property the old object did not list: its values were whatever the old object let other names hold."""
        if _open_for(old.schema, name):
            if not self.refusals(old.at({}), added, where):
                return []
            change = (
                f"earlier events may already carry {name!r} with any value; close the object "
                "(additionalProperties: false) or give the property the empty schema"
            )
            return [Finding(where, "PROPERTY_ADDED_TO_OPEN_CONTENT_MODEL", change)]
        before = _additional_for(old.schema, name)
        if before is False or not self.refusals(old.at(before), added, where):
            return []
        change = f"{name!r} was allowed by the schema for the object's other names, and is narrower now"
        return [Finding(where, "PROPERTY_ADDED_NOT_COVERED_BY_PARTIALLY_OPEN_CONTENT_MODEL", change)]

    def _property_removed(self, removed: _Node, new: _Node, name: str, where: str) -> list[Finding]:
        """A property the new object no longer lists: its values must pass what the new object lets other names hold."""
        after = _additional_for(new.schema, name)
        if after is False:
            change = f"{name!r} removed from a closed object: values carrying it are refused"
            return [Finding(where, "PROPERTY_REMOVED_FROM_CLOSED_CONTENT_MODEL", change)]
        if after is True or not self.refusals(removed, new.at(after), where):
            return []
        change = f"{name!r} removed; the schema for the object's other names does not take its values"
        return [Finding(where, "PROPERTY_REMOVED_NOT_COVERED_BY_PARTIALLY_OPEN_CONTENT_MODEL", change)]

    def _other_properties(self, old: _Node, new: _Node, pointer: str) -> list[Finding]:
        """Names neither lists: the new ``additionalProperties`` and ``patternProperties`` against the old."""
        old_schema, new_schema = old.schema, new.schema
        found: list[Finding] = []
        old_patterns, new_patterns = old_schema.get("patternProperties", {}), new_schema.get("patternProperties", {})
        for pattern, schema in new_patterns.items():
            where = f"{pointer}/patternProperties/{_escaped(pattern)}"
            for name, listed in old_schema.get("properties", {}).items():  # a pattern applies to listed names too
                if schema != old_patterns.get(pattern) and _pattern_matches(pattern, name):
                    found += self.refusals(old.at(listed), new.at(schema), where)
            if pattern in old_patterns:
                found += self.refusals(old.at(old_patterns[pattern]), new.at(schema), where)
            elif self.refusals(old.at(old_schema.get("additionalProperties", True)), new.at(schema), where) or any(
                self.refusals(old.at(other), new.at(schema), where) for other in old_patterns.values()
            ):
                found.append(
                    Finding(where, "PATTERN_PROPERTY_ADDED", "names matching it may hold values allowed before")
                )
        after = new_schema.get("additionalProperties", True)
        if after is not True:
            where = f"{pointer}/additionalProperties"
            before = old.at(old_schema.get("additionalProperties", True))
            if after is False and before.schema is not False:
                found.append(
                    Finding(where, "ADDITIONAL_PROPERTIES_REMOVED", "the object is closed now: other names are refused")
                )
            elif after is not False:
                if self.refusals(before, new.at(after), where):
                    found.append(
                        Finding(where, "ADDITIONAL_PROPERTIES_NARROWED", "other names take fewer values than before")
                    )
                found += [
                    Finding(where, "ADDITIONAL_PROPERTIES_NARROWED", f"names matching {pattern!r} take fewer values")
                    for pattern, schema in old_patterns.items()
                    if pattern not in new_patterns and self.refusals(old.at(schema), new.at(after), where)
                ]
        return found

    def _arrays(self, old: _Node, new: _Node, pointer: str) -> list[Finding]:
        """Items by position (``prefixItems``, then ``items``), counts, uniqueness and ``contains``."""
        old_schema, new_schema = old.schema, new.schema
        found: list[Finding] = []
        old_prefix, new_prefix = old_schema.get("prefixItems", []), new_schema.get("prefixItems", [])
        old_rest, new_rest = old_schema.get("items", True), new_schema.get("items", True)
        for index in range(max(len(old_prefix), len(new_prefix))):
            before = old_prefix[index] if index < len(old_prefix) else old_rest
            after = new_prefix[index] if index < len(new_prefix) else new_rest
            where = f"{pointer}/prefixItems/{index}" if index < len(new_prefix) else f"{pointer}/items"
            found += self.refusals(old.at(before), new.at(after), where)
        found += self.refusals(old.at(old_rest), new.at(new_rest), f"{pointer}/items")
        found += _count_limits(old_schema, new_schema, pointer, "Items", "ITEMS")
        if new_schema.get("uniqueItems") is True and old_schema.get("uniqueItems") is not True:
            found.append(Finding(f"{pointer}/uniqueItems", "UNIQUE_ITEMS_ADDED", "repeated items are refused now"))
        contains = {key: new_schema[key] for key in ("contains", "minContains", "maxContains") if key in new_schema}
        if contains and contains != {key: old_schema.get(key) for key in contains}:
            found.append(
                Finding(
                    f"{pointer}/contains", "CONTAINS_CHANGED", "what the array must contain changed", undecided=True
                )
            )
        return found

    def _types(self, old: dict[str, Any], new: dict[str, Any], pointer: str) -> list[Finding]:
        """A type the old schema allowed that the new one does not."""
        before, after = schema_types(old), schema_types(new)
        if after is None:
            return []
        lost = (set(_TYPES) if before is None else before) - after
        if not lost:
            return []
        kept = (set(_TYPES) if before is None else before) & after
        rule = "TYPE_NARROWED" if kept else "TYPE_CHANGED"
        said_before = "any type" if before is None else _type_words(before)
        return [Finding(f"{pointer}/type", rule, f"{said_before} before, {_type_words(after)} now")]

    def _unknown_keywords(self, old: dict[str, Any], new: dict[str, Any], pointer: str) -> list[Finding]:
        """Assertions the checker does not read: any change to one is a break it cannot rule out."""
        return [
            Finding(
                f"{pointer}/{_escaped(key)}",
                "KEYWORD_UNDECIDED",
                f"the checker cannot tell what {key!r} changes",
                undecided=True,
            )
            for key, value in new.items()
            if key not in _HANDLED and key not in _ANNOTATIONS and not key.startswith("x-") and old.get(key) != value
        ]


# --- keyword rules without subschemas --------------------------------------------------------


def _number_limits(old: dict[str, Any], new: dict[str, Any], pointer: str) -> list[Finding]:
    """Lower and upper bounds (inclusive or exclusive) and ``multipleOf``."""
    found = []
    for side, (inclusive, exclusive) in (
        ("MINIMUM", ("minimum", "exclusiveMinimum")),
        ("MAXIMUM", ("maximum", "exclusiveMaximum")),
    ):
        before, after = _bound(old, inclusive, exclusive, side), _bound(new, inclusive, exclusive, side)
        if after is None:
            continue
        keyword = exclusive if after[1] else inclusive
        if before is None:
            found.append(Finding(f"{pointer}/{keyword}", f"{side}_ADDED", f"{_limit(after)} now, no limit before"))
        elif _tighter(before, after, side):
            change = "INCREASED" if side == "MINIMUM" else "DECREASED"
            found.append(
                Finding(f"{pointer}/{keyword}", f"{side}_{change}", f"{_limit(before)} before, {_limit(after)} now")
            )
    step_after = new.get("multipleOf")
    if step_after is not None:
        step_before = old.get("multipleOf")
        if step_before is None:
            found.append(Finding(f"{pointer}/multipleOf", "MULTIPLE_OF_ADDED", f"multiples of {step_after} only"))
        elif not _divides(step_after, step_before):
            found.append(
                Finding(
                    f"{pointer}/multipleOf",
                    "MULTIPLE_OF_CHANGED",
                    f"multiples of {step_before} before, of {step_after} now",
                )
            )
    return found


def _string_limits(old: dict[str, Any], new: dict[str, Any], pointer: str) -> list[Finding]:
    """Lengths, ``pattern`` and ``format``."""
    found = _count_limits(old, new, pointer, "Length", "LENGTH")
    if "pattern" in new and new["pattern"] != old.get("pattern"):
        if "pattern" in old:
            found.append(
                Finding(
                    f"{pointer}/pattern",
                    "PATTERN_CHANGED",
                    f"{old['pattern']!r} before, {new['pattern']!r} now: the checker cannot compare two "
                    "regular expressions, so it counts a break",
                    undecided=True,
                )
            )
        else:
            found.append(Finding(f"{pointer}/pattern", "PATTERN_ADDED", f"strings must match {new['pattern']!r} now"))
    if "format" in new and new["format"] != old.get("format"):
        found.append(Finding(f"{pointer}/format", "FORMAT_CHANGED", f"format {new['format']!r} is checked now"))
    return found


def _count_limits(old: dict[str, Any], new: dict[str, Any], pointer: str, noun: str, rule: str) -> list[Finding]:
    """``min<noun>`` raised or added, ``max<noun>`` lowered or added (lengths, items, properties)."""
    found = []
    low, high = f"min{noun}", f"max{noun}"
    if low in new and new[low] > old.get(low, 0):
        change = "INCREASED" if low in old else "ADDED"
        found.append(
            Finding(f"{pointer}/{low}", f"MIN_{rule}_{change}", f"at least {new[low]} now, {old.get(low, 0)} before")
        )
    if high in new and (high not in old or new[high] < old[high]):
        change = "DECREASED" if high in old else "ADDED"
        found.append(
            Finding(
                f"{pointer}/{high}",
                f"MAX_{rule}_{change}",
                f"at most {new[high]} now, {old.get(high, 'no limit')} before",
            )
        )
    return found


def _bound(schema: dict[str, Any], inclusive: str, exclusive: str, side: str) -> tuple[Fraction, bool] | None:
    """The tightest bound on one side: (value, exclusive?), or None."""
    candidates = []
    for keyword, is_exclusive in ((inclusive, False), (exclusive, True)):
        value = schema.get(keyword)
        if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
            candidates.append((Fraction(value), is_exclusive))
    if not candidates:
        return None
    if side == "MINIMUM":
        return max(candidates, key=lambda bound: (bound[0], bound[1]))
    return min(candidates, key=lambda bound: (bound[0], not bound[1]))


def _tighter(before: tuple[Fraction, bool], after: tuple[Fraction, bool], side: str) -> bool:
    """True when ``after`` refuses a number ``before`` let through."""
    if before[0] == after[0]:
        return after[1] and not before[1]
    return after[0] > before[0] if side == "MINIMUM" else after[0] < before[0]


def _divides(step: Any, multiple: Any) -> bool:
    """True when every multiple of ``multiple`` is a multiple of ``step`` (decimal, as the validator counts)."""
    try:
        ratio = Fraction(str(multiple)) / Fraction(str(step))
    except (ValueError, ZeroDivisionError):
        return False
    return ratio.denominator == 1


def _limit(bound: tuple[Fraction, bool]) -> str:
    """A bound as people read it: "> 0", ">= 10"."""
    value = bound[0]
    shown = str(value.numerator) if value.denominator == 1 else str(float(value))
    return f"{'exclusive ' if bound[1] else ''}{shown}"


# --- small helpers ---------------------------------------------------------------------------


def _validity(node: _Node) -> Callable[[Any], bool | None]:
    """Whether a value is valid under the node's schema, as payloads are checked; None for all if it has a ``$ref``."""
    if _references(node.schema):
        return lambda value: None
    return schema_acceptor(node.schema)


def _accepts_everything(schema: Any) -> bool:
    """True for ``true`` and for a schema of annotations only."""
    if schema is True:
        return True
    return isinstance(schema, dict) and not _assertions(schema)


def _assertions(schema: dict[str, Any]) -> dict[str, Any]:
    """A schema's keywords that can refuse a value (annotations and extensions left out)."""
    return {key: value for key, value in schema.items() if key not in _ANNOTATIONS and not key.startswith("x-")}


def _same(one: dict[str, Any], other: dict[str, Any]) -> bool:
    """The same JSON (Python's == alone takes ``true`` for ``1``)."""
    return one == other and json.dumps(one, sort_keys=True) == json.dumps(other, sort_keys=True)


def _references(schema: Any) -> bool:
    """True when a ``$ref`` or ``$dynamicRef`` appears anywhere in the schema."""
    if isinstance(schema, dict):
        return "$ref" in schema or "$dynamicRef" in schema or any(_references(value) for value in schema.values())
    if isinstance(schema, list):
        return any(_references(value) for value in schema)
    return False


def _merged(one: dict[str, Any], other: dict[str, Any]) -> dict[str, Any] | None:
    """Both schemas' keywords as one schema, when that means the same as both together; else None."""
    merged = dict(one)
    for key, value in other.items():
        if key not in merged or merged[key] == value or key in _ANNOTATIONS:
            merged.setdefault(key, value)
        elif key == "required":
            merged[key] = sorted(set(merged[key]) | set(value))
        elif key == "properties" and not set(merged[key]) & set(value):
            merged[key] = {**merged[key], **value}
        else:
            return None
    return merged


def _alternatives_of(schema: dict[str, Any]) -> list[dict[str, Any]]:
    """A schema as the cases its values fall in: one per ``anyOf``/``oneOf`` branch, then one per type listed."""
    alternatives = [schema]
    for keyword in ("anyOf", "oneOf"):
        if keyword not in schema:
            continue
        base = {key: value for key, value in schema.items() if key not in ("anyOf", "oneOf")}
        cases = []
        for branch in schema[keyword]:
            if branch is False:
                continue
            merged = _merged(base, {} if branch is True else branch)
            cases.append(merged if merged is not None else base)
        alternatives = cases
        break  # both at once: the cases of the first; the second is dropped (more values, never fewer)
    by_type = []
    for alternative in alternatives:
        declared = alternative.get("type")
        if isinstance(declared, list) and len(declared) > 1:
            by_type += [{**alternative, "type": name} for name in declared]
        else:
            by_type.append(alternative)
    return by_type


def _shared_types(old: dict[str, Any], new: dict[str, Any]) -> set[str]:
    """Types both schemas allow: where the new one's other keywords can refuse an old value."""
    before, after = schema_types(old), schema_types(new)
    return (set(_TYPES) if before is None else before) & (set(_TYPES) if after is None else after)


def _type_words(types: set[str]) -> str:
    """Types as one word list, integer left out where number says it."""
    shown = [name for name in _TYPES if name in types and not (name == "integer" and "number" in types)]
    return " or ".join(shown)


def _additional_for(schema: dict[str, Any], name: str) -> Any:
    """The schema a property not listed in ``properties`` falls under: a matching pattern's, or additionalProperties."""
    for pattern, subschema in schema.get("patternProperties", {}).items():
        if _pattern_matches(pattern, name):
            return subschema
    return schema.get("additionalProperties", True)


def _open_for(schema: dict[str, Any], name: str) -> bool:
    """True when an unlisted property of that name may hold any value (the open content model, for that name)."""
    return _additional_for(schema, name) is True


def _pattern_matches(pattern: str, name: str) -> bool:
    """Whether a property name matches a pattern, as the validator matches it (RE2)."""
    try:
        return regex_compiled(pattern).search(name) is not None
    except Exception:
        return True


def _escaped(name: str) -> str:
    """A name as a JSON pointer token."""
    return name.replace("~", "~0").replace("/", "~1")


def _listed(values: list[Any]) -> str:
    """Values as JSON, a few at most."""
    import json

    shown = ", ".join(json.dumps(value, ensure_ascii=False) for value in values[:5])
    return shown + (", …" if len(values) > 5 else "")


def _unique(findings: list[Finding]) -> list[Finding]:
    """Findings without repeats, in order."""
    return list(dict.fromkeys(findings))
