"""The chaos suite at the issue's sizes, its rows printed as one Markdown table for bench/README.md.

Run: ``.venv/bin/python bench/chaos.py`` (SQLite) or
``.venv/bin/python bench/chaos.py --database-url postgres://postgres@127.0.0.1:5432/hms_chaos``
(pytest-django creates ``test_hms_chaos`` beside it and drops it after). ``--scale`` multiplies
the issue's sizes (1: a 20,000-entry burst, 10,000 malformed messages, 100 external publishes a
second for 20 s after the kill, 4 API clients at up to 200 requests/s each);
``-k`` selects scenarios as pytest does.

It runs ``pytest tests/chaos -m chaos`` with ``CHAOS_SCALE`` and ``CHAOS_REPORT`` set: every
scenario starts its own processes (two uvicorn web servers, one to three ``manage.py bus_worker``,
its own redis-server) on the chosen database, injects its fault, and writes its row; a failed
scenario still writes its row, marked FAIL, with what differed in the notes.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.live import _revision  # noqa: E402


def main() -> int:
    """Run the scenarios, print the table; the exit status is pytest's."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--database-url", help="PostgreSQL to run on (default: SQLite under var/)")
    parser.add_argument("--scale", type=float, default=1.0, help="times the issue's sizes (the suite uses 0.25)")
    parser.add_argument("--recovery-timeout", type=float, default=120.0, help="seconds a scenario waits to recover")
    parser.add_argument("-k", dest="select", help="pytest -k expression selecting scenarios")
    arguments = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="hms-chaos-") as folder:
        report = Path(folder) / "rows.jsonl"
        env = {
            **os.environ,
            "CHAOS_SCALE": str(arguments.scale),
            "CHAOS_REPORT": str(report),
            "CHAOS_RECOVERY_TIMEOUT": str(arguments.recovery_timeout),
        }
        if arguments.database_url:
            env["DATABASE_URL"] = arguments.database_url
        command = [sys.executable, "-m", "pytest", "tests/chaos", "-m", "chaos", "-q", "-p", "no:cacheprovider"]
        if arguments.select:
            command += ["-k", arguments.select]
        started = time.monotonic()
        finished = subprocess.run(command, cwd=ROOT, env=env, check=False)
        took = time.monotonic() - started
        rows = [json.loads(line) for line in report.read_text().splitlines()] if report.exists() else []

    print()
    print(
        f"code: {_revision()}; scale {arguments.scale:g}; {platform.python_version()}; "
        f"{os.cpu_count()} cores; {took:.0f} s in all; pytest exit status {finished.returncode}"
    )
    print()
    columns = rows[0]["columns"] if rows else ["scenario"]
    print("| " + " | ".join(columns) + " |")
    print("|" + "---|" * len(columns))
    for row in rows:
        print("| " + " | ".join(row["cells"]) + " |")
    print()
    for row in rows:
        for note in row["notes"]:
            print(f"- {row['scenario']}: {note}")
        for problem in row["problems"]:
            print(f"- {row['scenario']}: **{problem.splitlines()[0]}**")
    return finished.returncode


if __name__ == "__main__":
    sys.exit(main())
