"""Bus workers' heartbeats: each writes its state to Redis every few seconds; health, metrics and the dashboard read it.

One hash, ``hms:workers``: a field per worker (its name), a JSON value with when it last
beat and the state of each of its loops. Redis, not the database: a beat every 5 s per
worker would take SQLite's write lock for nothing, and when Redis is down the bus is down
(``/healthz`` says so) whatever the workers say.
"""

from __future__ import annotations

import datetime as dt
import json
import time
from dataclasses import asdict, dataclass, field
from typing import Any

WORKERS_KEY = "hms:workers"
HEARTBEAT_EVERY_SECONDS = 5.0
# A worker whose last beat is older than this is taken for dead (three beats missed).
ALIVE_WITHIN_SECONDS = 15.0
# Beats of workers gone this long are removed by the next worker that beats.
FORGET_AFTER_SECONDS = 3600.0


@dataclass
class LoopState:
    """One loop of a worker: running, retrying (its last step failed) or stopped, and its errors so far."""

    state: str = "starting"
    errors: int = 0
    last_error: str = ""
    last_error_at: float | None = None

    def failed(self, error: BaseException) -> None:
        """Count a failure of the loop's step and keep what it said."""
        self.state = "retrying"
        self.errors += 1
        self.last_error = f"{type(error).__name__}: {error}"[:500]
        self.last_error_at = time.time()


@dataclass
class WorkerBeat:
    """What a worker said at its last beat."""

    name: str
    at: float
    pid: int
    started_at: float
    loops: dict[str, LoopState] = field(default_factory=dict)

    def age(self, now: float | None = None) -> float:
        """Seconds since this beat."""
        return (time.time() if now is None else now) - self.at

    def alive(self, now: float | None = None) -> bool:
        """Whether it beat within ALIVE_WITHIN_SECONDS."""
        return self.age(now) <= ALIVE_WITHIN_SECONDS

    @property
    def errors(self) -> int:
        """Every loop's errors since the worker started."""
        return sum(loop.errors for loop in self.loops.values())

    @property
    def started(self) -> dt.datetime:
        """When the worker started, as an aware UTC datetime."""
        return dt.datetime.fromtimestamp(self.started_at, tz=dt.UTC)

    @property
    def last_error(self) -> tuple[str, str] | None:
        """The loop that failed last, and what it said; None when none has."""
        failed = [
            (loop.last_error_at, name, loop.last_error) for name, loop in self.loops.items() if loop.last_error_at
        ]
        if not failed:
            return None
        _, name, message = max(failed)
        return name, message

    def encode(self) -> str:
        """The JSON kept in Redis."""
        return json.dumps(asdict(self), separators=(",", ":"))


def beat_decode(name: str, raw: bytes | str) -> WorkerBeat | None:
    """A beat read back from Redis; None when what is there is not one (nothing read from Redis is trusted)."""
    try:
        data: Any = json.loads(raw)
        loops = {str(loop): LoopState(**state) for loop, state in data["loops"].items()}
        return WorkerBeat(name, float(data["at"]), int(data["pid"]), float(data["started_at"]), loops)
    except (ValueError, TypeError, KeyError, AttributeError):
        return None


def beats_from_hash(raw: dict[Any, Any]) -> list[WorkerBeat]:
    """The beats of an ``HGETALL hms:workers`` reply, newest first, without what cannot be read."""
    beats = []
    for name, value in raw.items():
        beat = beat_decode(name.decode(errors="replace") if isinstance(name, bytes) else str(name), value)
        if beat is not None:
            beats.append(beat)
    return sorted(beats, key=lambda beat: beat.at, reverse=True)
