"""Fixtures of the chaos suite: a Redis each scenario owns and may kill, a publishing token, the run's table."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import pytest

from tests.chaos.harness import Cluster, Report, api_token
from tests.support import RedisServer

_report = Report()


@pytest.fixture
def chaos_redis() -> Iterator[RedisServer]:
    """A redis-server of the scenario's own, which it may SIGKILL, SIGSTOP and start again on the same port."""
    server = RedisServer()
    server.start()
    try:
        yield server
    finally:
        with contextlib.suppress(Exception):
            server.resume()  # a stopped server does not take SIGTERM until it runs again
        server.stop()


@pytest.fixture
def token(demo_committed: None) -> str:
    """A service token that may publish on tax-policy."""
    return api_token()


@pytest.fixture(autouse=True)
def _processes_stopped(transactional_db: None) -> Iterator[None]:
    """Every process a scenario started is stopped after it, even when it failed half-way.

    It depends on the database fixture so that it is torn down first: no process of the
    scenario still writes while the tables are emptied for the next test.
    """
    yield
    for cluster in list(Cluster.started):
        cluster.stop()


@pytest.fixture
def report() -> Report:
    """The run's table of scenario rows."""
    return _report


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    """The chaos table, after the run."""
    if _report.rows:
        terminalreporter.section("chaos scenarios")
        for line in _report.table():
            terminalreporter.write_line(line)
