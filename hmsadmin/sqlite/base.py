"""Django's SQLite backend, with one process's write transactions taking turns on a lock.

SQLite lets one writer in at a time. A connection that finds the database locked waits in
SQLite's busy handler, which sleeps in steps growing to 100 ms and may sleep on long after the
lock is free: with 8 API clients a batch waited up to 3 s (bench/README.md, api.py). Threads of
one process (the web server's requests) now queue on a lock instead and start the moment the
previous transaction ends; other processes (the bus worker) still meet at SQLite's own lock.
"""

from __future__ import annotations

import threading
from typing import Any

from django.db import OperationalError
from django.db.backends.sqlite3 import base

_writer = threading.Lock()


class DatabaseWrapper(base.DatabaseWrapper):
    """SQLite, taking the process's write lock at BEGIN and giving it back at COMMIT, ROLLBACK or close."""

    holds_writer = False
    # Seconds to wait for this process's write turn; below zero, as long as it takes. A health
    # check sets it on its own connection, so that a stuck writer makes it fail, not hang.
    writer_wait_seconds: float = -1

    def _start_transaction_under_autocommit(self) -> None:
        """BEGIN IMMEDIATE, once this thread's turn has come."""
        if not _writer.acquire(timeout=self.writer_wait_seconds):
            raise OperationalError(
                f"database is locked: this process's writer held it over {self.writer_wait_seconds} s"
            )
        self.holds_writer = True
        try:
            if self.queries_logged:
                super()._start_transaction_under_autocommit()  # type: ignore[misc]  # a private hook django-stubs leaves out
            else:
                # On the driver's connection: Django's cursor wrapper cost more than the BEGIN itself.
                with self.wrap_database_errors:
                    self.connection.execute(f"BEGIN {self.transaction_mode or ''}")  # type: ignore[attr-defined]  # not in django-stubs
        except BaseException:
            self._writer_release()
            raise

    def _commit(self) -> Any:
        """COMMIT, then let the next writer in."""
        try:
            return super()._commit()  # type: ignore[misc]  # a private hook django-stubs leaves out
        finally:
            self._writer_release()

    def _rollback(self) -> Any:
        """ROLLBACK, then let the next writer in."""
        try:
            return super()._rollback()  # type: ignore[misc]  # a private hook django-stubs leaves out
        finally:
            self._writer_release()

    def _close(self) -> Any:
        """Close; a transaction cut short by the close ends, and so does its turn."""
        try:
            return super()._close()  # type: ignore[misc]  # a private hook django-stubs leaves out
        finally:
            self._writer_release()

    def _writer_release(self) -> None:
        """Give the lock back if this connection holds it."""
        if self.holds_writer:
            self.holds_writer = False
            _writer.release()
