"""``manage.py export_schemas <folder>``: the registry back as schema files that ``sync_schemas`` reads unchanged."""

from pathlib import Path
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from busapp.models import SchemaVersion, SchemaVersionState
from busapp.schema_files import export_file_names, schema_file_text, schema_files_placed, schema_heads


class Command(BaseCommand):
    """Write one file per event type holding its newest version, its topic and type, and its mode and policy."""

    help = (
        "Write the registry as <folder>/<event type>.json (<topic>--<event type>.json where a type's name is on"
        " several topics; a file already naming the type is rewritten in place): each event type's newest version"
        " as its author wrote it, with the type's compatibility mode and policy. sync_schemas of the folder then"
        " changes nothing."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        """The folder to write (created if missing)."""
        parser.add_argument("folder", type=Path)

    def handle(self, *args: Any, **options: Any) -> None:
        """Name every file first (a file of the folder is overwritten only if it names the same type), then write."""
        folder: Path = options["folder"]
        if folder.exists() and not folder.is_dir():
            raise CommandError(f"{folder} is not a folder: name a folder to write the schema files to")
        folder.mkdir(parents=True, exist_ok=True)
        heads = schema_heads()
        placed = schema_files_placed(folder)
        names = export_file_names(heads, placed=placed, taken={path.name for path in folder.iterdir()})
        for head in heads:
            name = names[head.event_type_id]
            (folder / name).write_text(schema_file_text(head), encoding="utf-8")
            self.stdout.write(f"{name}: {self._described(head)}")
        exported = {(head.event_type.topic.name, head.event_type.name) for head in heads}
        for (topic, type_name), name in placed.items():
            if (topic, type_name) not in exported:
                self.stdout.write(f"{name}: {topic}/{type_name} is not in the registry; left as it is")

    def _described(self, head: SchemaVersion) -> str:
        """What a file holds: the type, the version, the mode and policy, and a head that is not enabled."""
        event_type = head.event_type
        settings = f"{event_type.compatibility_mode}, {event_type.compatibility_policy}"
        if head.state == SchemaVersionState.DISABLED:
            # Files are the head: sync compares a file with the newest version, whatever its state.
            settings += ", disabled: the newest version, though publishers may not use it"
        elif head.state == SchemaVersionState.DEPRECATED:
            settings += ", deprecated"
        return f"{event_type} v{head.version} ({settings})"
