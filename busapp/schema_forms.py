"""Web forms generated from a schema version: the layout (cached per version) and reading a submitted form back.

Every input is named by the JSON pointer of the value it holds (``/payload/brackets/0/rate``),
so a validation error's path names the input it belongs to, with no mapping table.
Arrays are numbered rows; the page's script adds and removes rows by copying a template
row whose index is ``__index__``. What a form cannot draw (``oneOf``, ``anyOf``,
``patternProperties``, a ``$ref`` outside the schema, a type list) turns the form into
raw JSON mode for that schema, validated the same way.
"""

from __future__ import annotations

import datetime as dt
import json
import math
import re
import threading
from dataclasses import dataclass, field
from typing import Any

from django.http import QueryDict

from busapp.errors import FieldError
from busapp.models import SchemaVersion
from busapp.validation import json_parse, json_pointer

ROOT = "/payload"
INDEX_PLACEHOLDER = "__index__"
# The raw JSON box refuses text far past the payload limit before parsing it.
RAW_JSON_MAX_CHARS = 4 * 64 * 1024
# Keywords a form cannot express; a schema (or part) using them is published as raw JSON.
_UNDRAWABLE = ("oneOf", "anyOf", "allOf", "not", "if", "patternProperties", "dependentSchemas", "prefixItems")
# A date-time is typed as ISO text in UTC ("datetime": a text input the page shows local time beside):
# the browser's own picker follows its locale (a 12-hour clock in the US) next to a UTC label.
_STRING_INPUTS = {"date": "date", "date-time": "datetime", "email": "email", "uri": "url", "time": "time"}
_layouts: dict[tuple[int, str], FormLayout] = {}
_layouts_lock = threading.Lock()


class UndrawableSchemaError(Exception):
    """A part of the schema the generated form cannot draw; the page offers raw JSON instead."""


@dataclass
class FormField:
    """One input, fieldset or repeatable row group of a generated form."""

    path: str  # JSON pointer of the value, also the input's name
    kind: str  # number, integer, string, select, boolean, object, array
    label: str
    help: str = ""
    required: bool = False
    input_type: str = "text"  # the HTML input type for numbers and strings
    attrs: dict[str, Any] = field(default_factory=dict)  # min, max, step, minlength, maxlength, pattern
    choices: list[tuple[str, str]] = field(default_factory=list)  # (value, label) for selects and booleans
    default: Any = None
    children: list[FormField] = field(default_factory=list)  # an object's properties
    item: FormField | None = None  # an array's row template (path ends in __index__)
    min_items: int = 0

    def at(self, path: str) -> FormField:
        """The field (and its children) moved to another path: an array row's copy of the template."""
        moved = FormField(**{**self.__dict__, "path": path})
        moved.children = [child.at(path + child.path[len(self.path) :]) for child in self.children]
        if self.item is not None:
            moved.item = self.item.at(path + self.item.path[len(self.path) :])
        return moved


@dataclass
class FormLayout:
    """The generated form of one schema version, or why there is none (then raw JSON it is)."""

    version_id: int
    fields: list[FormField]
    undrawable: str = ""  # why the form is raw JSON only

    @property
    def drawable(self) -> bool:
        """True when a form could be generated for the whole schema."""
        return not self.undrawable


def form_layout(version: SchemaVersion) -> FormLayout:
    """The form of a schema version, built once per process (versions never change); a draft's is not kept."""
    if version.pk is None:
        return _build_layout(version)
    key = (version.pk, version.fingerprint)
    layout = _layouts.get(key)
    if layout is None:
        with _layouts_lock:
            layout = _layouts.get(key)
            if layout is None:
                layout = _layouts[key] = _build_layout(version)
    return layout


def _build_layout(version: SchemaVersion) -> FormLayout:
    """Turn a schema into form fields, or record why it cannot be one."""
    schema = version.authored
    try:
        root = _field(schema, schema, ROOT, label="Payload", required=True)
    except UndrawableSchemaError as error:
        return FormLayout(version.pk, [], undrawable=str(error))
    if root.kind != "object":
        return FormLayout(version.pk, [], undrawable="the payload is not an object with named fields")
    return FormLayout(version.pk, root.children)


def _resolve(node: Any, root: Any, path: str) -> dict[str, Any]:
    """Follow a local ``$ref`` (``#/$defs/...``); anything else is beyond a form."""
    seen = 0
    while isinstance(node, dict) and "$ref" in node:
        ref = node["$ref"]
        if not isinstance(ref, str) or not ref.startswith("#/") or seen > 20:
            raise UndrawableSchemaError(f"{path or '/'}: $ref {ref!r} points outside this schema")
        target: Any = root
        for part in ref[2:].split("/"):
            part = part.replace("~1", "/").replace("~0", "~")
            if not isinstance(target, dict) or part not in target:
                raise UndrawableSchemaError(f"{path}: $ref {ref!r} does not resolve")
            target = target[part]
        node = {**target, **{k: v for k, v in node.items() if k != "$ref"}}
        seen += 1
    if not isinstance(node, dict):
        raise UndrawableSchemaError(f"{path}: a boolean schema has no fields to draw")
    return node


def _field(node: Any, root: Any, path: str, *, label: str, required: bool) -> FormField:
    """The form field for one schema node."""
    node = _titled_choices(_resolve(node, root, path))
    for keyword in _UNDRAWABLE:
        if keyword in node:
            raise UndrawableSchemaError(f"{path}: '{keyword}' has no form equivalent")
    kind = node.get("type")
    if kind is None and "enum" in node:
        kind = "string"
    if not isinstance(kind, str):
        raise UndrawableSchemaError(f"{path}: type {kind!r} is not one type a form input can hold")
    common: dict[str, Any] = {
        "path": path,
        "label": str(node.get("title") or label),
        "help": str(node.get("description", "")),
        "required": required,
        "default": node.get("default"),
    }
    if kind == "object":
        needed = set(node.get("required", []))
        properties = node.get("properties", {})
        children = [
            _field(child, root, json_pointer(path, [name]), label=_humanize(name), required=name in needed)
            for name, child in properties.items()
        ]
        return FormField(kind="object", children=children, **common)
    if kind == "array":
        item = _field(node.get("items", {}), root, f"{path}/{INDEX_PLACEHOLDER}", label="Item", required=True)
        return FormField(kind="array", item=item, min_items=int(node.get("minItems", 0)), **common)
    return _leaf_field(node, kind, path, common)


def _titled_choices(node: dict[str, Any]) -> dict[str, Any]:
    """``oneOf`` (or ``anyOf``) of constants, each with its title: the choices of a select, as an enum with names."""
    for keyword in ("oneOf", "anyOf"):
        branches = node.get(keyword)
        if isinstance(branches, list) and branches and all(_is_titled_constant(branch) for branch in branches):
            rest = {key: value for key, value in node.items() if key != keyword}
            names = [str(branch.get("title", branch["const"])) for branch in branches]
            return {**rest, "enum": [branch["const"] for branch in branches], "x-enumNames": names}
    return node


def _is_titled_constant(branch: Any) -> bool:
    """A branch that is one constant, with at most its title and description."""
    return isinstance(branch, dict) and "const" in branch and set(branch) <= {"const", "title", "description"}


def _leaf_field(node: dict[str, Any], kind: str, path: str, common: dict[str, Any]) -> FormField:
    """The form field of a node holding one value: a choice, a number, a text or yes/no."""
    if "enum" in node:
        names = node.get("x-enumNames")
        if not (isinstance(names, list) and len(names) == len(node["enum"])):
            names = node["enum"]
        choices = [(json.dumps(value), str(name)) for value, name in zip(node["enum"], names, strict=True)]
        return FormField(kind="select", choices=choices, **common)
    if kind in ("number", "integer"):
        return FormField(kind=kind, input_type="number", attrs=_number_attrs(node, kind), **common)
    if kind == "string":
        attrs = {
            html: node[keyword]
            for keyword, html in (("minLength", "minlength"), ("maxLength", "maxlength"), ("pattern", "pattern"))
            if keyword in node
        }
        return FormField(
            kind="string", input_type=_STRING_INPUTS.get(node.get("format", ""), "text"), attrs=attrs, **common
        )
    if kind == "boolean":
        return FormField(kind="boolean", choices=[("true", "Yes"), ("false", "No")], **common)
    raise UndrawableSchemaError(f"{path}: type {kind!r} has no form input")


def _number_attrs(node: dict[str, Any], kind: str) -> dict[str, Any]:
    """HTML limits of a number input: min, max and step (from multipleOf)."""
    attrs: dict[str, Any] = {"step": node.get("multipleOf", 1 if kind == "integer" else "any")}
    for keyword, html in (("minimum", "min"), ("maximum", "max")):
        if keyword in node:
            attrs[html] = node[keyword]
    return attrs


def _humanize(name: str) -> str:
    """A label from a property name: ``standard_deduction`` → ``Standard deduction``."""
    words = re.sub(r"[_\-]+", " ", name).strip()
    return words[:1].upper() + words[1:] if words else name


# Reading a submitted form back into a payload.


@dataclass
class FormReading:
    """A payload read from a submitted form, with the inputs that could not be read as their type."""

    payload: dict[str, Any]
    errors: list[FieldError]


def payload_from_form(layout: FormLayout, data: QueryDict) -> FormReading:
    """Read the submitted inputs into a payload; an unreadable input becomes an error at its path."""
    errors: list[FieldError] = []
    payload = _read_object(layout.fields, data, errors)
    return FormReading(payload, errors)


def _read_object(fields: list[FormField], data: QueryDict, errors: list[FieldError]) -> dict[str, Any]:
    """An object from its fields; empty optional inputs are left out, as a person leaving them blank means."""
    value: dict[str, Any] = {}
    for child in fields:
        name = child.path.rsplit("/", 1)[1].replace("~1", "/").replace("~0", "~")
        read = _read(child, data, errors)
        if read is not _MISSING:
            value[name] = read
    return value


_MISSING = object()


def _read(form_field: FormField, data: QueryDict, errors: list[FieldError]) -> Any:
    """One field's value, or _MISSING when its input was left empty."""
    if form_field.kind == "object":
        return _read_object(form_field.children, data, errors)
    if form_field.kind == "array" and form_field.item is not None:
        rows = []
        for index in row_indexes(form_field, data):
            row_path = f"{form_field.path}/{index}"
            if _left_blank(row_path, data):  # named as such, not as each of its fields missing
                errors.append({"path": row_path, "message": "is blank: fill it in or remove it"})
                continue
            rows.append(_read(form_field.item.at(row_path), data, errors))
        return rows
    raw = data.get(form_field.path, "").strip()
    if raw == "":
        return _MISSING
    try:
        return _convert(form_field, raw)
    except ValueError as error:
        errors.append({"path": form_field.path, "message": str(error)})
        return raw


def _left_blank(row_path: str, data: QueryDict) -> bool:
    """Whether every input of an array row was left empty."""
    inputs = [name for name in data if name == row_path or name.startswith(row_path + "/")]
    return bool(inputs) and all(not value.strip() for name in inputs for value in data.getlist(name))


def submitted_payload(layout: FormLayout, data: QueryDict, *, raw_mode: bool) -> FormReading:
    """The payload a person submitted, from the generated inputs or the raw JSON box, with what could not be read."""
    if not raw_mode:
        return payload_from_form(layout, data)
    text = data.get("payload_json", "")
    if len(text) > RAW_JSON_MAX_CHARS:
        return FormReading({}, [{"path": ROOT, "message": f"is {len(text):,} characters; far over the 64 KiB limit"}])
    payload, errors = json_parse(text, path=ROOT)
    if errors:  # not JSON, nested over 64 levels, NUL, lone surrogates
        return FormReading({}, errors)
    if not isinstance(payload, dict):
        return FormReading({}, [{"path": ROOT, "message": "must be a JSON object: {...}"}])
    return FormReading(payload, [])


def row_indexes(array: FormField, data: QueryDict) -> list[int]:
    """The row numbers of an array that the form submitted, in order (rows may have been removed in between)."""
    prefix = f"{array.path}/"
    found: set[int] = set()
    for name in data:
        if name.startswith(prefix):
            head = name[len(prefix) :].split("/", 1)[0]
            if head.isdigit():
                found.add(int(head))
    return sorted(found)


def _convert(form_field: FormField, raw: str) -> Any:
    """Turn one input's text into the JSON value its schema expects."""
    if form_field.kind in ("integer", "number"):
        return _number_from_input(raw, whole=form_field.kind == "integer")
    if form_field.kind == "boolean":
        if raw not in ("true", "false"):
            raise ValueError("must be yes or no")
        return raw == "true"
    if form_field.kind == "select":
        allowed = {value for value, _ in form_field.choices}
        if raw not in allowed:
            raise ValueError("must be one of the choices")
        return json.loads(raw)
    if form_field.input_type == "datetime":
        return _datetime_from_input(raw)
    return raw


def _number_from_input(raw: str, *, whole: bool) -> int | float:
    """A number input's text as JSON's number: an integer where it was written as one."""
    if whole:
        try:
            return int(raw)
        except ValueError:
            raise ValueError("must be a whole number") from None
    try:
        number = float(raw)
    except ValueError:
        raise ValueError("must be a number") from None
    if not math.isfinite(number):
        raise ValueError("must be a finite number")
    return int(number) if number.is_integer() and "." not in raw and "e" not in raw.lower() else number


def utc_text(value: str) -> str:
    """An RFC 3339 date-time as the form shows it, in UTC: ``2027-01-31 09:00`` (seconds only when there are some)."""
    try:
        moment = dt.datetime.fromisoformat(value)
    except ValueError:
        return value  # shown as it came, and refused with its rule at the field
    if moment.tzinfo is not None:
        moment = moment.astimezone(dt.UTC)
    return moment.strftime("%Y-%m-%d %H:%M:%S" if moment.second or moment.microsecond else "%Y-%m-%d %H:%M")


def _datetime_from_input(raw: str) -> str:
    """A typed time (``2027-01-31 09:00``, UTC as the form says) as an RFC 3339 date-time in UTC."""
    try:
        moment = dt.datetime.fromisoformat(raw.strip().removesuffix("UTC").strip())
    except ValueError:
        raise ValueError("must be a date and time like 2027-01-31 09:00") from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=dt.UTC)
    return moment.astimezone(dt.UTC).isoformat().replace("+00:00", "Z")


def form_values(layout: FormLayout, payload: dict[str, Any]) -> dict[str, str]:
    """Input values (by name) that show a payload in the form again: after an error, or to edit a preview."""
    values: dict[str, str] = {}
    _values_of(layout.fields, payload, values)
    return values


def _values_of(fields: list[FormField], value: Any, values: dict[str, str]) -> None:
    """Fill ``values`` with each field's input text for ``value`` (an object)."""
    if not isinstance(value, dict):
        return
    for child in fields:
        name = child.path.rsplit("/", 1)[1].replace("~1", "/").replace("~0", "~")
        if name not in value:
            continue
        item = value[name]
        if child.kind == "object":
            _values_of(child.children, item, values)
        elif child.kind == "array" and isinstance(item, list) and child.item is not None:
            for index, element in enumerate(item):
                row = child.item.at(f"{child.path}/{index}")
                if row.kind == "object":
                    _values_of(row.children, element, values)
                else:
                    values[row.path] = _input_text(row, element)
        else:
            values[child.path] = _input_text(child, item)


def _input_text(form_field: FormField, value: Any) -> str:
    """How one value is written into its input."""
    if form_field.kind in ("select", "boolean"):
        return json.dumps(value)
    if form_field.input_type == "datetime" and isinstance(value, str):
        return utc_text(value)
    return str(value)


# Binding a layout to values and errors, for the template.


@dataclass
class BoundField:
    """A form field with what the page shows in it: its input text, its errors, its rows."""

    spec: FormField
    value: str = ""
    errors: list[str] = field(default_factory=list)
    children: list[BoundField] = field(default_factory=list)
    rows: list[BoundField] = field(default_factory=list)
    row_template: BoundField | None = None

    @property
    def name(self) -> str:
        """The input's name: the JSON pointer of its value."""
        return self.spec.path

    @property
    def dom_id(self) -> str:
        """An element id for the input's label."""
        return "f" + re.sub(r"[^A-Za-z0-9_-]", "-", self.spec.path)

    @property
    def as_text(self) -> bool:
        """Whether the value cannot stand in its input (a browser would empty it): a text input holds it instead."""
        pattern = _INPUT_VALUES.get(self.spec.input_type)
        return bool(self.value) and pattern is not None and not pattern.fullmatch(self.value)

    @property
    def off_the_list(self) -> bool:
        """Whether a select's value (one that arrived) is none of its choices."""
        return bool(self.value) and all(self.value != value for value, _ in self.spec.choices)


# What each typed input can hold (HTML's value sanitization empties anything else).
_INPUT_VALUES = {
    "number": re.compile(r"-?(\d+(\.\d*)?|\.\d+)([eE][-+]?\d+)?"),
    "date": re.compile(r"\d{4}-\d{2}-\d{2}"),
    "time": re.compile(r"\d{2}:\d{2}(:\d{2}(\.\d{1,3})?)?"),
}


@dataclass(frozen=True)
class SummaryLine:
    """One problem in the error summary at the top of a form: the input it links to, its label, what is wrong."""

    dom_id: str
    label: str
    message: str


@dataclass
class BoundForm:
    """The whole generated form as the page shows it, with the errors that belong to no single input."""

    fields: list[BoundField]
    errors: list[str]

    @property
    def summary(self) -> list[SummaryLine]:
        """Every problem in page order, each named by its field's label (rows by their number)."""
        lines: list[SummaryLine] = []
        for bound in self.fields:
            _summarised(bound, "", lines)
        return lines

    @property
    def has_errors(self) -> bool:
        """Whether anything in the form is refused."""
        return bool(self.errors or self.summary)


def _summarised(bound: BoundField, prefix: str, lines: list[SummaryLine]) -> None:
    """Add a bound field's problems, then its children's and rows', to ``lines``."""
    label = f"{prefix}{bound.spec.label}"
    lines.extend(SummaryLine(bound.dom_id, label, message) for message in bound.errors)
    for child in bound.children:
        _summarised(child, f"{label}: ", lines)
    for number, row in enumerate(bound.rows, start=1):
        _summarised_row(row, f"{label}, row {number}", lines)


def _summarised_row(row: BoundField, label: str, lines: list[SummaryLine]) -> None:
    """An array row's problems: the row's own under the row's name, its fields' as 'row N: field'."""
    lines.extend(SummaryLine(row.dom_id, label, message) for message in row.errors)
    for child in row.children:
        _summarised(child, f"{label}: ", lines)
    for number, nested in enumerate(row.rows, start=1):
        _summarised_row(nested, f"{label}, row {number}", lines)


def form_bind(
    layout: FormLayout, values: dict[str, str] | QueryDict | None, errors: list[FieldError] | None = None
) -> BoundForm:
    """Attach values (submitted, or a payload's) and errors (each to the deepest input its path is under)."""
    by_path: dict[str, list[str]] = {}
    for error in errors or []:
        by_path.setdefault(error["path"], []).append(error["message"])
    use_defaults = values is None
    source: Any = values or {}
    bound = [_bind(child, source, use_defaults) for child in layout.fields]
    loose: list[str] = []
    for path, messages in by_path.items():
        if not _place(bound, path, messages):
            loose.extend(messages)
    return BoundForm(bound, loose)


def _bind(form_field: FormField, values: Any, use_defaults: bool) -> BoundField:
    """One field bound to the submitted values (or to the schema's defaults on a fresh form)."""
    if form_field.kind == "object":
        return BoundField(form_field, children=[_bind(child, values, use_defaults) for child in form_field.children])
    if form_field.kind == "array" and form_field.item is not None:
        if use_defaults:
            defaults = form_field.default if isinstance(form_field.default, list) else []
            indexes = list(range(max(len(defaults), form_field.min_items, 1 if form_field.required else 0)))
            row_values = form_values(FormLayout(0, [form_field]), {form_field.path.rsplit("/", 1)[1]: defaults})
            rows = [_bind(form_field.item.at(f"{form_field.path}/{i}"), row_values, False) for i in indexes]
        else:
            indexes = (
                row_indexes(form_field, values) if isinstance(values, QueryDict) else _dict_indexes(form_field, values)
            )
            rows = [_bind(form_field.item.at(f"{form_field.path}/{i}"), values, False) for i in indexes]
        return BoundField(form_field, rows=rows, row_template=_bind(form_field.item, {}, False))
    if use_defaults:
        value = "" if form_field.default is None else _input_text(form_field, form_field.default)
    else:
        value = values.get(form_field.path, "")
    return BoundField(form_field, value=value)


def _dict_indexes(array: FormField, values: dict[str, str]) -> list[int]:
    """Row numbers present in a dict of input values."""
    prefix = f"{array.path}/"
    return sorted(
        {
            int(n.split("/", 1)[0])
            for n in (k[len(prefix) :] for k in values if k.startswith(prefix))
            if n.split("/", 1)[0].isdigit()
        }
    )


def _place(bound: list[BoundField], path: str, messages: list[str]) -> bool:
    """Put messages on the deepest bound field whose path the error path is at or under."""
    best: BoundField | None = None
    stack = list(bound)
    while stack:
        candidate = stack.pop()
        own = candidate.spec.path
        if path == own or path.startswith(own + "/"):
            if best is None or len(own) > len(best.spec.path):
                best = candidate
            stack.extend(candidate.children)
            stack.extend(candidate.rows)
    if best is None:
        return False
    best.errors.extend(_in_words(best.spec, message) for message in messages)
    return True


def _in_words(form_field: FormField, message: str) -> str:
    """A message as the form says it at its field: a missing value asks for it by the field's label."""
    if message != "is required but missing":
        return message
    label = form_field.label
    named = label[0].lower() + label[1:] if label[1:2].islower() else label
    if form_field.kind in ("select", "boolean"):
        return f"Choose the {named}"
    if form_field.kind == "array":
        return f"Add at least one row to {named}"
    return f"Enter the {named}"
