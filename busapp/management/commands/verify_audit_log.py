"""``manage.py verify_audit_log``: recompute the hash chain; exit non-zero at the first broken entry."""

from typing import Any

from django.core.management.base import BaseCommand, CommandError

from busapp.audit import audit_verify


class Command(BaseCommand):
    """Check that no audit entry was changed, removed or inserted since it was written."""

    help = "Verify the audit log's hash chain; exits 1 naming the first broken entry."

    def handle(self, *args: Any, **options: Any) -> None:
        """Walk the chain and report."""
        report = audit_verify()
        if not report.intact:
            raise CommandError(
                f"audit log broken at entry #{report.broken_seq}: {report.problem} "
                f"(entries #1 to #{report.last_seq} verified)"
            )
        self.stdout.write(
            f"audit log intact: {report.checked} entries verified through #{report.last_seq}, "
            f"head hash {report.last_hash}"
        )
