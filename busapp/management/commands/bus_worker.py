"""``manage.py bus_worker``: relay, tap and fan-out until SIGTERM or Ctrl-C."""

import asyncio
import gc
from typing import Any

from django.core.management.base import BaseCommand, CommandParser

from busapp.worker import BusWorker, run_until_signalled


class Command(BaseCommand):
    """Run the bus worker: publishes pending events, records all bus traffic, feeds live views."""

    help = "Run the bus worker (relay, tap, fan-out). SIGTERM or Ctrl-C stops it cleanly."

    def add_arguments(self, parser: CommandParser) -> None:
        """Options: the consumer name and how long before orphaned entries are taken over."""
        parser.add_argument("--name", help="consumer name in the Redis group (default: host-pid)")
        parser.add_argument(
            "--claim-idle-ms",
            type=int,
            default=None,
            help="take over entries another worker left unacknowledged this long (default BUS_CLAIM_IDLE_MS)",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        """Start the worker and block until it is told to stop."""
        # What start-up loaded lives as long as the process: kept out of the collector's full
        # passes (the collector was 18% of the worker's busy samples at 100 events/s: bench/README.md).
        gc.freeze()
        asyncio.run(self._run(options["name"], options["claim_idle_ms"]))
        self.stdout.write("bus worker stopped cleanly")

    async def _run(self, name: str | None, claim_idle_ms: int | None) -> None:
        """Build the worker inside the event loop and run it."""
        worker = BusWorker(name=name, claim_idle_ms=claim_idle_ms)

        async def ready() -> None:
            self.stdout.write(f"bus worker {worker.name} running: relay, tap, fan-out (SIGTERM or Ctrl-C stops it)")
            self.stdout.flush()

        await run_until_signalled(worker, on_ready=ready)
