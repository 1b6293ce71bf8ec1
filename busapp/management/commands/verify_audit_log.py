"""``manage.py verify_audit_log``: recompute the hash chain; exit non-zero at the first broken entry."""

import getpass
from argparse import ArgumentParser
from typing import Any

from django.core.management.base import BaseCommand, CommandError

from busapp.audit import audit_verify


class Command(BaseCommand):
    """Check that no audit entry was changed, removed or inserted since it was written."""

    help = "Verify the audit log's hash chain; exits 1 naming the first broken entry. Every run is recorded."

    def add_arguments(self, parser: ArgumentParser) -> None:
        """``--resume``: only the entries after the newest intact check."""
        parser.add_argument(
            "--resume",
            action="store_true",
            help="verify only the entries after the newest intact check (once its last entry is confirmed unchanged)",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        """Walk the chain and report."""
        report = audit_verify(resume=options["resume"], checked_by=self._operator())
        if not report.intact:
            verified = f"entries #1 to #{report.last_seq} verified" if report.last_seq else "no entry verified"
            raise CommandError(f"audit log broken at entry #{report.broken_seq}: {report.problem} ({verified})")
        resumed = f" (resumed at #{report.from_seq})" if report.from_seq > 1 else ""
        self.stdout.write(
            f"audit log intact: {report.checked} entries verified through #{report.last_seq}{resumed}, "
            f"head hash {report.last_hash}"
        )
        self.stdout.write(
            f"{report.checked:,} entries in {report.seconds:.2f} s: {report.entries_per_second:,.0f} entries/s"
        )

    def _operator(self) -> str:
        """Who ran the check, for its record: the operator's login name."""
        try:
            return f"cli:{getpass.getuser()}"
        except (KeyError, OSError):  # no login name (a container with an unnamed uid)
            return "cli:operator"
