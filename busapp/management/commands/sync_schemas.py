"""``manage.py sync_schemas <folder>``: schema-as-code; JSON files in git become schema versions."""

from pathlib import Path
from typing import Any

from django.core.exceptions import ValidationError
from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.db import transaction

from busapp.actions.registry import event_type_create, schema_version_create, topic_create
from busapp.errors import SchemaInvalidError
from busapp.models import EventType, SchemaVersion, Topic
from busapp.validation import json_parse, schema_fingerprint

TOPIC_KEY = "x-hms-topic"
TYPE_KEY = "x-hms-event-type"


class Command(BaseCommand):
    """Create a schema version for every file whose schema differs from the newest stored one."""

    help = (
        f"Load schemas/*.json: each file is a JSON Schema naming its topic in '{TOPIC_KEY}' and its "
        f"event type in '{TYPE_KEY}'. Unchanged files create nothing; all files load or none do."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        """The folder to read."""
        parser.add_argument("folder", type=Path)
        parser.add_argument("--as", dest="actor", default="cli:sync_schemas", help="actor name for the audit log")

    def handle(self, *args: Any, **options: Any) -> None:
        """Read every file first, then create what changed in one transaction."""
        folder: Path = options["folder"]
        files = sorted(folder.glob("*.json"))
        if not files:
            raise CommandError(f"{folder}: no *.json schema files found")
        schemas = [(path, self._read(path)) for path in files]
        actor = options["actor"]
        try:
            with transaction.atomic():
                for path, schema in schemas:
                    self.stdout.write(f"{path.name}: {self._sync(schema, actor)}")
        except (SchemaInvalidError, ValidationError) as error:
            message = "; ".join(error.messages) if isinstance(error, ValidationError) else str(error)
            raise CommandError(f"{path.name}: {message} (nothing was saved)") from None

    def _read(self, path: Path) -> dict[str, Any]:
        """Parse one file and check it names its topic and event type."""
        schema, errors = json_parse(path.read_bytes())
        if errors:  # not UTF-8 or not JSON, nested over 64 levels, NUL, lone surrogates
            where = errors[0]["path"] or "the file"
            raise CommandError(f"{path.name}: {where} {errors[0]['message']} (nothing was saved)")
        if not isinstance(schema, dict):
            raise CommandError(f"{path.name}: a schema file must hold a JSON object")
        for key in (TOPIC_KEY, TYPE_KEY):
            if not isinstance(schema.get(key), str):
                raise CommandError(f"{path.name}: '{key}' is missing; it names where the schema belongs")
        return schema

    def _sync(self, schema: dict[str, Any], actor: str) -> str:
        """Create the topic, event type and version as needed; say what happened."""
        topic = Topic.objects.filter(name=schema[TOPIC_KEY]).first()
        if topic is None:
            topic = topic_create(name=schema[TOPIC_KEY], actor=actor)
        event_type = EventType.objects.filter(topic=topic, name=schema[TYPE_KEY]).first()
        if event_type is None:
            event_type = event_type_create(
                topic=topic, name=schema[TYPE_KEY], actor=actor, description=schema.get("description", "")
            )
        latest = SchemaVersion.objects.filter(event_type=event_type).order_by("-version").first()
        where = f"{topic.name}/{event_type.name}"
        if latest is not None and latest.fingerprint == schema_fingerprint(schema):
            return f"{where} unchanged (v{latest.version})"
        version = schema_version_create(event_type=event_type, schema=schema, actor=actor)
        return f"{where} v{version.version} created"
