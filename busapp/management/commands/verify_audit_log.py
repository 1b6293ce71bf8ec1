"""``manage.py verify_audit_log``: recompute the hash chain (and with ``--events``, every history row against it)."""

import getpass
from argparse import ArgumentParser
from typing import Any

from django.core.management.base import BaseCommand, CommandError

from busapp.audit import audit_verify
from busapp.history_check import Finding, events_verify


class Command(BaseCommand):
    """Check that no audit entry (and with ``--events``, no history row) was changed, removed or inserted."""

    help = (
        "Verify the audit log's hash chain; exits 1 naming the first broken entry. Every run is recorded. "
        "With --events, also re-hash every history row against the digest its audit entry holds and name each "
        "edited, added or missing row (exit 1 if any)."
    )

    def add_arguments(self, parser: ArgumentParser) -> None:
        """``--resume``: only the entries after the newest intact check; ``--events``: the history rows too."""
        parser.add_argument(
            "--resume",
            action="store_true",
            help="verify only the entries after the newest intact check (once its last entry is confirmed unchanged)",
        )
        parser.add_argument(
            "--events",
            action="store_true",
            help="also re-hash every history row against its audit entry: name each edited, added or missing row",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        """Walk the chain (then the history), report, and exit 1 on anything found."""
        report = audit_verify(resume=options["resume"], checked_by=self._operator())
        broken = ""
        if report.intact:
            resumed = f" (resumed at #{report.from_seq})" if report.from_seq > 1 else ""
            self.stdout.write(
                f"audit log intact: {report.checked} entries verified through #{report.last_seq}{resumed}, "
                f"head hash {report.last_hash}"
            )
            self.stdout.write(
                f"{report.checked:,} entries in {report.seconds:.2f} s: {report.entries_per_second:,.0f} entries/s"
            )
        else:
            verified = f"entries #1 to #{report.last_seq} verified" if report.last_seq else "no entry verified"
            broken = f"audit log broken at entry #{report.broken_seq}: {report.problem} ({verified})"
            if not options["events"]:
                raise CommandError(broken)
            self.stderr.write(broken)
        if options["events"]:
            self._events_check(broken)

    def _events_check(self, broken: str) -> None:
        """Every history row against the audit log: each finding on its own line, then the totals."""

        def show(finding: Finding) -> None:
            self.stdout.write(str(finding))

        report = events_verify(on_finding=show)
        counts = ", ".join(f"{count} {kind}" for kind, count in report.found.items())
        by_name = report.without_digest
        older = f"; {by_name} vouched for by name only (their entries are older than digests)" if by_name else ""
        summary = f"history: {report.rows:,} rows and {report.batches:,} batch entries checked: {counts}{older}"
        if report.intact and not broken:
            self.stdout.write(f"{summary}; every row is as the audit log vouches for it")
            return
        problems = [broken] if broken else []
        if not report.intact:
            problems.append(f"{summary}: history differs from what the audit log vouches for")
        raise CommandError("; ".join(problems))

    def _operator(self) -> str:
        """Who ran the check, for its record: the operator's login name."""
        try:
            return f"cli:{getpass.getuser()}"
        except (KeyError, OSError):  # no login name (a container with an unnamed uid)
            return "cli:operator"
