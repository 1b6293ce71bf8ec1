"""Schema-as-code both ways: read a folder of JSON Schema files and plan their sync, or write the registry as files.

Nothing here writes to the database. ``manage.py sync_schemas`` applies a plan through the
registry's actions (``--check`` and ``--dry-run`` only print it); ``manage.py export_schemas``
writes the files. A file names where its schema belongs (``x-hms-topic``, ``x-hms-event-type``,
stored with the schema as they always were) and may set its type's compatibility mode and
policy (``x-hms-compatibility``, ``x-hms-compatibility-policy``): those two are about the type,
not the payload, so they are taken out before the schema is fingerprinted and stored, and a
change of mode alone creates no version.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from django.core.exceptions import ValidationError
from referencing import Registry
from referencing.jsonschema import DRAFT202012

from busapp.errors import FieldError, SchemaInvalidError
from busapp.models import (
    CompatibilityMode,
    CompatibilityPolicy,
    EventType,
    SchemaVersion,
    Topic,
    validate_event_type_name,
    validate_topic_name,
)
from busapp.validation import (
    SCHEMA_MAX_BYTES,
    json_parse,
    schema_check,
    schema_fingerprint,
    schema_uri,
    stored_schema_registry,
)
from busapp.version_drafts import draft_findings, versions_of

TOPIC_KEY = "x-hms-topic"
TYPE_KEY = "x-hms-event-type"
MODE_KEY = "x-hms-compatibility"
POLICY_KEY = "x-hms-compatibility-policy"
TYPE_SETTINGS = (MODE_KEY, POLICY_KEY)
# A file may be pretty-printed; its schema's canonical JSON is held to SCHEMA_MAX_BYTES by schema_check.
FILE_MAX_BYTES = 4 * SCHEMA_MAX_BYTES
NAME_SEPARATOR = "--"  # between topic and type in a file name: event type names never hold '-'


class SchemaFileError(Exception):
    """A file that cannot be synced: every problem, each naming the file, the JSON pointer and the rule it breaks."""

    def __init__(self, name: str, problems: list[FieldError]) -> None:
        self.problems = [f"{name}: {problem['path'] or 'the file'}: {problem['message']}" for problem in problems]
        super().__init__("\n".join(self.problems))


@dataclass(frozen=True)
class SchemaFile:
    """One file as the registry would take it: the schema without the type's settings, and those settings."""

    path: Path
    topic: str
    event_type: str
    schema: dict[str, Any]
    mode: str | None
    policy: str | None

    @property
    def name(self) -> str:
        """The file's name, as messages show it."""
        return self.path.name

    @property
    def where(self) -> str:
        """``topic/event_type``."""
        return f"{self.topic}/{self.event_type}"


@dataclass
class FilePlan:
    """What syncing one file does: topic and type created, the type's mode changed, a version created or not."""

    file: SchemaFile
    topic_new: bool
    type_new: bool
    mode: tuple[str, str]  # the type's mode and policy once the file is synced
    mode_before: tuple[str, str] | None  # the type's mode and policy when the file changes them
    newest: int | None  # the newest stored version's number
    number: int | None  # the version the file creates; None when it matches the newest
    problems: list[str] = field(default_factory=list)

    def lines(self) -> list[str]:
        """The plan in words, one line per change, then every problem."""
        name, where = self.file.name, self.file.where
        lines = [f"{name}: topic {self.file.topic} created"] if self.topic_new else []
        if self.type_new:
            lines.append(f"{name}: event type {where} created ({self.mode[0]}, {self.mode[1]})")
        if self.mode_before is not None:
            before, after = self.mode_before, self.mode
            lines.append(f"{name}: {where} mode {before[0]} ({before[1]}) -> {after[0]} ({after[1]})")
        if self.problems:
            lines.append(f"{name}: {where} v{self.number} refused ({len(self.problems)} problem(s)):")
            return lines + [f"  {problem}" for problem in self.problems]
        if self.number is None:
            return [*lines, f"{name}: {where} unchanged (v{self.newest})"]
        return [*lines, f"{name}: {where} v{self.number} created"]


def schema_files_read(folder: Path) -> tuple[list[SchemaFile], list[str]]:
    """Every ``*.json`` file of a folder, by name, and every file's problems (one event type per file)."""
    files: list[SchemaFile] = []
    problems: list[str] = []
    seen: dict[tuple[str, str], str] = {}
    for path in sorted(folder.glob("*.json")):
        try:
            file = schema_file_read(path)
        except SchemaFileError as error:
            problems += error.problems
            continue
        other = seen.setdefault((file.topic, file.event_type), file.name)
        if other != file.name:
            message = f"{file.where} is also in {other}: one file per event type (the file is its newest version)"
            problems += SchemaFileError(file.name, [{"path": f"/{TYPE_KEY}", "message": message}]).problems
            continue
        files.append(file)
    return files, problems


def schema_file_read(path: Path) -> SchemaFile:
    """Parse one file; refuse it, naming each pointer and rule, unless it says validly where it belongs."""
    size = path.stat().st_size
    if size > FILE_MAX_BYTES:
        message = f"is {size / 1024:,.0f} KiB; a schema file may be at most {FILE_MAX_BYTES // 1024} KiB"
        raise SchemaFileError(path.name, [{"path": "", "message": message}])
    schema, errors = json_parse(path.read_bytes())
    if errors:  # not UTF-8 or not JSON, nested over 64 levels, NUL, lone surrogates
        raise SchemaFileError(path.name, errors)
    if not isinstance(schema, dict):
        message = "must hold a JSON object: the event type's JSON Schema"
        raise SchemaFileError(path.name, [{"path": "", "message": message}])
    problems = [
        *_name_problems(schema, TOPIC_KEY, "topic", validate_topic_name),
        *_name_problems(schema, TYPE_KEY, "event type", validate_event_type_name),
        *_setting_problems(schema, MODE_KEY, "compatibility mode", CompatibilityMode.values),
        *_setting_problems(schema, POLICY_KEY, "compatibility policy", CompatibilityPolicy.values),
    ]
    if problems:
        raise SchemaFileError(path.name, problems)
    stored = {key: value for key, value in schema.items() if key not in TYPE_SETTINGS}
    return SchemaFile(path, schema[TOPIC_KEY], schema[TYPE_KEY], stored, schema.get(MODE_KEY), schema.get(POLICY_KEY))


def _name_problems(schema: dict[str, Any], key: str, what: str, validate: Callable[[str], None]) -> list[FieldError]:
    """What is wrong with the topic or event type a file names: missing, not a string, or against its naming rule."""
    value = schema.get(key)
    if not isinstance(value, str):
        rule = "is missing" if value is None else "must be a string"
        return [{"path": f"/{key}", "message": f"{rule}: it names the {what} the schema belongs to"}]
    try:
        validate(value)
    except ValidationError as error:
        return [{"path": f"/{key}", "message": error.messages[0]}]
    return []


def _setting_problems(schema: dict[str, Any], key: str, what: str, allowed: Sequence[str]) -> list[FieldError]:
    """What is wrong with the mode or policy a file sets for its type (absent: the type keeps its own)."""
    if key not in schema or schema[key] in allowed:
        return []
    shown = json.dumps(schema[key], ensure_ascii=False)[:80]
    return [{"path": f"/{key}", "message": f"{shown} is not a {what}: use one of {', '.join(allowed)}"}]


def schema_files_plan(files: Sequence[SchemaFile]) -> list[FilePlan]:
    """What syncing the files would do, in order; a file may ``$ref`` a version an earlier file creates."""
    stored = stored_schema_registry()  # read once for every file
    plans = []
    for file in files:
        plan = _file_plan(file, stored)
        if plan.number is not None and not plan.problems:
            stored = _with_version(stored, file, plan.number)
        plans.append(plan)
    return plans


def _file_plan(file: SchemaFile, stored: Registry[Any]) -> FilePlan:
    """One file's plan: its type's mode applies before its new version is checked."""
    topic = Topic.objects.filter(name=file.topic).first()
    event_type = EventType.objects.select_related("topic").filter(topic=topic, name=file.event_type).first()
    current = _settings_of(event_type)
    mode = (file.mode or current[0], file.policy or current[1])
    versions = versions_of(event_type) if event_type is not None else []
    newest = versions[0] if versions else None
    plan = FilePlan(
        file=file,
        topic_new=topic is None,
        type_new=event_type is None,
        mode=mode,
        mode_before=current if event_type is not None and mode != current else None,
        newest=newest.version if newest else None,
        number=_number_created(newest, file),
    )
    if plan.number is not None:
        plan.problems = _version_problems(file, plan.number, event_type, mode, versions, stored)
    return plan


def _settings_of(event_type: EventType | None) -> tuple[str, str]:
    """A type's mode and policy; a new type's defaults."""
    if event_type is None:
        return CompatibilityMode.BACKWARD.value, CompatibilityPolicy.STRICT.value
    return event_type.compatibility_mode, event_type.compatibility_policy


def _number_created(newest: SchemaVersion | None, file: SchemaFile) -> int | None:
    """The number of the version a file creates, or None when it holds the newest version's schema."""
    if newest is None:
        return 1
    return None if schema_file_matches(newest, file) else newest.version + 1


def _version_problems(
    file: SchemaFile,
    number: int,
    event_type: EventType | None,
    mode: tuple[str, str],
    versions: list[SchemaVersion],
    stored: Registry[Any],
) -> list[str]:
    """Why the file cannot be the type's next version: invalid, or every finding of the mode it leaves the type in."""
    try:
        schema_check(file.schema, uri=schema_uri(file.topic, file.event_type, number), stored=stored)
    except SchemaInvalidError as error:
        return [f"{file.name}: {error}"]
    if event_type is None:
        return []
    as_left = EventType(
        pk=event_type.pk,
        topic=event_type.topic,
        name=event_type.name,
        compatibility_mode=mode[0],
        compatibility_policy=mode[1],
    )
    findings = draft_findings(as_left, file.schema, versions=versions, stored=stored)
    return [f"{file.name}: {finding}" for finding in findings]


def _with_version(stored: Registry[Any], file: SchemaFile, number: int) -> Registry[Any]:
    """The registry with a version the plan creates, so later files may refer to it as they could once it is saved."""
    resource = DRAFT202012.create_resource(file.schema)
    stored = stored.with_resource(schema_uri(file.topic, file.event_type, number), resource)
    if isinstance(file.schema.get("$id"), str):
        stored = stored.with_resource(file.schema["$id"], resource)
    return stored


def _comparable(schema: Any, topic: str, event_type: str) -> Any:
    """A schema as files and versions are compared: without the type's settings, with where it belongs."""
    if not isinstance(schema, dict):
        return schema
    kept = {key: value for key, value in schema.items() if key not in TYPE_SETTINGS}
    return {**kept, TOPIC_KEY: topic, TYPE_KEY: event_type}


def schema_file_matches(version: SchemaVersion, file: SchemaFile) -> bool:
    """Whether a file holds a version's schema; one made on the dashboard or the API lacks the file's x-hms keys."""
    if version.fingerprint == schema_fingerprint(file.schema):
        return True
    ours = _comparable(version.schema, file.topic, file.event_type)
    return schema_fingerprint(ours) == schema_fingerprint(_comparable(file.schema, file.topic, file.event_type))


def schema_heads() -> list[SchemaVersion]:
    """The newest version of every event type (whatever its state), by topic and type name."""
    versions = SchemaVersion.objects.select_related("event_type__topic").order_by(
        "event_type__topic__name", "event_type__name", "-version"
    )
    heads: dict[int, SchemaVersion] = {}
    for version in versions:
        heads.setdefault(version.event_type_id, version)
    return list(heads.values())


def schema_file_text(version: SchemaVersion) -> str:
    """A version as a file ``sync_schemas`` reads back unchanged: as authored, placed, with its type's settings."""
    event_type = version.event_type
    keys = {
        TOPIC_KEY: event_type.topic.name,
        TYPE_KEY: event_type.name,
        MODE_KEY: event_type.compatibility_mode,
        POLICY_KEY: event_type.compatibility_policy,
    }
    return json.dumps(_keys_set(version.authored, keys), indent=2, ensure_ascii=False) + "\n"


def _keys_set(authored: dict[str, Any], keys: dict[str, str]) -> dict[str, Any]:
    """The authored schema in its key order with ``keys`` set: in place where written, else after the last of them.

    With none of them written, they go after ``$schema``, or first.
    """
    anchors = [key for key in authored if key in keys or key == "$schema"]
    missing = {key: value for key, value in keys.items() if key not in authored}
    result = dict(missing) if not anchors else {}
    for key, value in authored.items():
        result[key] = keys.get(key, value)
        if anchors and key == anchors[-1]:
            result.update(missing)
    return result


def schema_files_placed(folder: Path) -> dict[tuple[str, str], str]:
    """The files of a folder that name a topic and an event type, by (topic, type); unreadable files are skipped."""
    placed: dict[tuple[str, str], str] = {}
    for path in sorted(folder.glob("*.json")):
        schema, errors = json_parse(path.read_bytes())
        if not errors and isinstance(schema, dict):
            topic, event_type = schema.get(TOPIC_KEY), schema.get(TYPE_KEY)
            if isinstance(topic, str) and isinstance(event_type, str):
                placed.setdefault((topic, event_type), path.name)
    return placed


def export_file_names(
    heads: Iterable[SchemaVersion], *, placed: dict[tuple[str, str], str], taken: set[str]
) -> dict[int, str]:
    """A file name per event type: the folder's file for it if any, else ``<type>.json``, else ``<topic>--<type>.json``.

    ``taken`` are the names already in the folder: never overwritten unless the file names the type.
    The long form is used when a type's name is on several topics or its short name is taken.
    """
    heads = list(heads)
    kept = {(head.event_type.topic.name, head.event_type.name): head for head in heads}
    names: dict[int, str] = {}
    for key, name in placed.items():
        if key in kept:
            names[kept[key].event_type_id] = name
    taken = set(taken) | set(names.values())
    type_names = [head.event_type.name for head in heads]
    for head in heads:
        if head.event_type_id in names:
            continue
        short = f"{head.event_type.name}.json"
        unique = type_names.count(head.event_type.name) == 1 and short not in taken
        long = f"{head.event_type.topic.name}{NAME_SEPARATOR}{head.event_type.name}"
        name = short if unique else _free_name(long, taken)
        names[head.event_type_id] = name
        taken.add(name)
    return names


def _free_name(stem: str, taken: set[str]) -> str:
    """``<stem>.json``, or ``<stem>-2.json`` and so on when a file of the folder about something else holds it."""
    name, count = f"{stem}.json", 1
    while name in taken:
        count += 1
        name = f"{stem}-{count}.json"
    return name
