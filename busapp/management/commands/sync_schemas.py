"""``manage.py sync_schemas <folder>``: schema-as-code; JSON files in git become schema versions and types' modes."""

from pathlib import Path
from typing import Any

from django.core.exceptions import ValidationError
from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.db import transaction

from busapp.actions.registry import (
    event_type_compatibility_set,
    event_type_create,
    schema_version_create,
    topic_create,
)
from busapp.errors import BusInputError, SchemaInvalidError, errors_joined
from busapp.models import EventType, Topic
from busapp.schema_files import (
    MODE_KEY,
    POLICY_KEY,
    TOPIC_KEY,
    TYPE_KEY,
    FilePlan,
    SchemaFile,
    schema_files_plan,
    schema_files_read,
)


def _files_in(problems: list[str]) -> int:
    """How many files the problems are about (each starts with its file's name)."""
    return len({problem.split(": ", 1)[0] for problem in problems})


class Command(BaseCommand):
    """Create a schema version for every file whose schema differs from the newest stored one."""

    help = (
        f"Load <folder>/*.json: each file is a JSON Schema naming its topic in '{TOPIC_KEY}' and its event type in"
        f" '{TYPE_KEY}'; it may set the type's '{MODE_KEY}' and '{POLICY_KEY}'. Unchanged files create nothing;"
        " all files load or none do. --check and --dry-run change nothing."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        """The folder to read, who acts, and the two ways to only look."""
        parser.add_argument("folder", type=Path)
        parser.add_argument("--as", dest="actor", default="cli:sync_schemas", help="actor name for the audit log")
        looking = parser.add_mutually_exclusive_group()
        looking.add_argument(
            "--check",
            action="store_true",
            help="print every problem of every file (invalid, or breaking its type's mode); exit 1 if any",
        )
        looking.add_argument(
            "--dry-run", action="store_true", help="print what a sync would change; exit 1 if it would be refused"
        )

    def handle(self, *args: Any, **options: Any) -> None:
        """Read and plan every file first; then report (--check, --dry-run) or apply all in one transaction."""
        folder: Path = options["folder"]
        files, problems = schema_files_read(folder)
        if not files and not problems:
            raise CommandError(f"{folder}: no *.json schema files found")
        if options["check"] or options["dry_run"]:
            self._report(schema_files_plan(files), problems, count=len(files) + len(problems), plan=options["dry_run"])
            return
        with transaction.atomic():
            plans = schema_files_plan(files)
            problems += [problem for plan in plans for problem in plan.problems]
            if problems:
                summary = f"(nothing was saved: {len(problems)} problem(s) in {_files_in(problems)} file(s))"
                raise CommandError("\n".join([*problems, summary]))
            for plan in plans:
                self._apply(plan, options["actor"])
                for line in plan.lines():
                    self.stdout.write(line)

    def _report(self, plans: list[FilePlan], problems: list[str], *, count: int, plan: bool) -> None:
        """Print the plan (--dry-run) or only the problems (--check); exit 1 when a sync would be refused."""
        if plan:
            self.stdout.write("dry run: the plan; nothing is saved")
        for problem in problems:
            self.stdout.write(problem)
        for file_plan in plans:
            for line in file_plan.lines() if plan else file_plan.problems:
                self.stdout.write(line)
        problems = problems + [problem for file_plan in plans for problem in file_plan.problems]
        if problems:
            refused = _files_in(problems)
            raise CommandError(
                f"{len(problems)} problem(s) in {refused} of {count} file(s); nothing was changed", returncode=1
            )
        verdict = "nothing was saved (dry run)" if plan else "all valid and compatible with their types' modes"
        self.stdout.write(f"{count} file(s) checked: {verdict}")

    def _apply(self, plan: FilePlan, actor: str) -> None:
        """Create the topic and type, set the type's mode, then create the version, as planned."""
        file = plan.file
        try:
            event_type = self._event_type(plan, actor)
            if plan.number is not None:
                details = {"file": file.name}
                schema_version_create(event_type=event_type, schema=file.schema, actor=actor, details=details)
        except (SchemaInvalidError, ValidationError, BusInputError) as error:
            raise CommandError(f"{file.name}: {self._message(error)} (nothing was saved)") from None

    def _event_type(self, plan: FilePlan, actor: str) -> EventType:
        """The file's event type, created (with its topic) or with the mode the file sets."""
        file = plan.file
        topic = Topic.objects.filter(name=file.topic).first() or topic_create(name=file.topic, actor=actor)
        event_type = EventType.objects.select_related("topic").filter(topic=topic, name=file.event_type).first()
        if event_type is None:
            return event_type_create(
                topic=topic,
                name=file.event_type,
                actor=actor,
                description=self._description(file),
                mode=plan.mode[0],
                policy=plan.mode[1],
            )
        if plan.mode_before is None:
            return event_type
        return event_type_compatibility_set(
            event_type=event_type, mode=plan.mode[0], policy=plan.mode[1], reason=f"set by {file.path}", actor=actor
        )

    def _description(self, file: SchemaFile) -> str:
        """A new type's description: the schema's, if it has one."""
        description = file.schema.get("description")
        return description if isinstance(description, str) else ""

    def _message(self, error: Exception) -> str:
        """An action's refusal in one line."""
        if isinstance(error, ValidationError):
            return "; ".join(error.messages)
        if isinstance(error, BusInputError):
            return errors_joined(error.errors)
        return str(error)
