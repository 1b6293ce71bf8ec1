"""The Pub/Sub listeners' sparkline: a day of minutes drawn as server-side SVG (the CSP allows no inline script)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from django import template

from busapp.delivery import DAY_SECONDS, ListenerHistory

register = template.Library()

WIDTH, HEIGHT, PAD = 240, 32, 2
# A day in columns of 12 minutes: each keeps its minutes' lowest and highest counts, so a short drop still shows.
COLUMNS = 120


@dataclass(frozen=True)
class Segment:
    """A run of columns with samples: the band between lowest and highest, and its two edges, as SVG points."""

    band: str
    high: str
    low: str


def _points(pairs: list[tuple[float, float]]) -> str:
    """SVG ``points`` text."""
    return " ".join(f"{x:.1f},{y:.1f}" for x, y in pairs)


@register.inclusion_tag("subscribers/_sparkline.html")
def listeners_sparkline(history: ListenerHistory, label: str) -> dict[str, Any]:
    """The last day's listener counts as steps, one column per 12 minutes; a gap where no worker sampled."""
    start, span = history.now - DAY_SECONDS, DAY_SECONDS / COLUMNS
    columns: dict[int, tuple[int, int]] = {}
    for minute in history.minutes:
        column = min(COLUMNS - 1, max(0, int((minute.minute - start) // span)))
        low, high = columns.get(column, (minute.low, minute.high))
        columns[column] = (min(low, minute.low), max(high, minute.high))
    top = max([1, *(high for _, high in columns.values())])

    def y(count: int) -> float:
        return PAD + (HEIGHT - 2 * PAD) * (1 - count / top)

    step = WIDTH / COLUMNS
    segments, run = [], []
    for column in range(COLUMNS + 1):
        if column in columns:
            run.append(column)
            continue
        if run:
            highs = [(x, y(columns[c][1])) for c in run for x in (c * step, (c + 1) * step)]
            lows = [(x, y(columns[c][0])) for c in run for x in (c * step, (c + 1) * step)]
            segments.append(Segment(_points(highs + lows[::-1]), _points(highs), _points(lows)))
            run = []
    return {
        "segments": segments,
        "width": WIDTH,
        "height": HEIGHT,
        "baseline": HEIGHT - PAD,
        "top": top,
        "label": label,
    }
