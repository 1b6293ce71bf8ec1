"""The dashboard's charts in headless Chromium: a colour per topic, UTC axes, three ranges, clicks that open pages."""

from __future__ import annotations

from typing import Any
from urllib.parse import parse_qs, urlparse

import pytest
from playwright.sync_api import Page, expect

from busapp.actions.publishing import event_publish_batch
from busapp.actions.registry import topic_create
from busapp.models import Source
from tests.e2e.conftest import BrowserLog, sign_in

pytestmark = pytest.mark.usefixtures("demo_committed", "bus")

CHART = "() => Boolean(window.Chart && Chart.getChart(document.getElementById('{}')))"


def _chart(page: Page, canvas: str) -> Any:
    """What the chart on ``canvas`` draws: its labels, each dataset's label, colours and data, its axis titles."""
    page.wait_for_function(CHART.format(canvas))
    return page.evaluate(
        """canvas => {
          const chart = Chart.getChart(document.getElementById(canvas));
          return {
            labels: chart.data.labels,
            datasets: chart.data.datasets.map((set) => ({
              label: set.label, color: set.borderColor, fill: set.backgroundColor, data: set.data })),
            x: chart.options.scales.x.title?.text ?? null,
            y: chart.options.scales.y.title?.text ?? null,
          };
        }""",
        canvas,
    )


def _click_element(page: Page, canvas: str, dataset: int, index: int) -> None:
    """Click the centre of one point or bar, where a person would."""
    x, y = page.evaluate(
        """([canvas, dataset, index]) => {
          const chart = Chart.getChart(document.getElementById(canvas));
          const point = chart.getDatasetMeta(dataset).data[index].getCenterPoint();
          return [point.x, point.y];
        }""",
        [canvas, dataset, index],
    )
    box = page.locator(f"#{canvas}").bounding_box()
    assert box is not None
    page.mouse.click(box["x"] + x, box["y"] + y)


def test_each_topic_keeps_its_colour_and_the_axes_say_utc(page: Page, browser_log: BrowserLog) -> None:
    items = [{"type": "tax_policy.updated", "payload": {"standard_deduction": n}} for n in (100, 200, 300)]
    event_publish_batch(topic="tax-policy", items=items, actor="cli:test", source=Source.CLI)
    sign_in(page, "auditor")

    before = _chart(page, "events-chart")
    colours = {dataset["label"]: dataset["color"] for dataset in before["datasets"]}
    assert (before["x"], before["y"]) == ("Time (UTC)", "events per minute")
    assert len(set(colours.values())) == len(colours)  # two topics, two colours
    topic_create(name="aaa.first", actor="cli:test")  # sorts before every other topic
    page.reload()
    after = _chart(page, "events-chart")

    assert after["datasets"][0]["label"] == "aaa.first"
    assert colours == {
        dataset["label"]: dataset["color"] for dataset in after["datasets"] if dataset["label"] in colours
    }
    bars = _chart(page, "dlq-chart")
    assert dict(zip(bars["labels"], bars["datasets"][0]["fill"], strict=True))["tax-policy"] == colours["tax-policy"]
    assert browser_log.errors == []


def test_the_ranges_count_by_minute_or_hour_and_say_so(page: Page, browser_log: BrowserLog) -> None:
    sign_in(page, "auditor")
    _chart(page, "events-chart")
    ranges = page.get_by_role("group", name="Time range")

    ranges.get_by_role("button", name="24 h").click()
    expect(page.locator("#events-caption")).to_have_text("Events per hour, last 24 hours")
    day = _chart(page, "events-chart")
    expect(ranges.get_by_role("button", name="24 h")).to_have_attribute("aria-pressed", "true")
    expect(ranges.get_by_role("button", name="1 h")).to_have_attribute("aria-pressed", "false")
    ranges.get_by_role("button", name="7 d").click()
    expect(page.locator("#events-caption")).to_have_text("Events per hour, last 7 days")
    week = _chart(page, "events-chart")

    assert (len(day["labels"]), day["y"]) == (24, "events per hour")
    assert day["labels"][-1].endswith(":00")
    assert (len(week["labels"]), week["x"]) == (168, "Time (UTC)")
    assert browser_log.errors == []


def test_a_bar_opens_its_topics_dead_letters_and_a_point_its_minute_of_history(
    page: Page, browser_log: BrowserLog
) -> None:
    items = [{"type": "tax_policy.updated", "payload": {"standard_deduction": n}} for n in (100, 200, 300, -1)]
    outcome = event_publish_batch(topic="tax-policy", items=items, actor="cli:test", source=Source.CLI)
    assert len(outcome.dead_letters) == 1
    sign_in(page, "auditor")

    bars = _chart(page, "dlq-chart")
    _click_element(page, "dlq-chart", 0, bars["labels"].index("tax-policy"))
    expect(page).to_have_url("/dlq/?topic=tax-policy")
    expect(page.locator("#letters tbody tr.letter")).to_have_count(1)

    page.go_back()
    events = _chart(page, "events-chart")
    tax_policy = next(n for n, dataset in enumerate(events["datasets"]) if dataset["label"] == "tax-policy")
    counts = events["datasets"][tax_policy]["data"]
    busiest = max(range(len(counts)), key=counts.__getitem__)
    _click_element(page, "events-chart", tax_policy, busiest)
    expect(page.locator("h1")).to_have_text("Event history")
    query = parse_qs(urlparse(page.url).query)

    assert (query["topic"], query["period"]) == (["tax-policy"], ["custom"])
    assert query["since"][0].endswith(":00Z")
    assert query["until"][0].endswith(":59Z")
    expect(page.locator("#history tbody tr")).to_have_count(counts[busiest])
    assert counts[busiest] >= 1
    assert browser_log.errors == []
