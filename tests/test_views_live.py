"""The live page and the history a reconnecting page reads to fill its gap."""

import datetime as dt

import pytest
from django.contrib.auth.models import User
from django.test import Client
from django.utils import timezone

from busapp.actions.publishing import event_publish

pytestmark = pytest.mark.usefixtures("demo_committed", "bus")


def _client(username: str) -> Client:
    client = Client()
    client.force_login(User.objects.get(username=username))
    return client


def _publish(deduction: int) -> str:
    event = event_publish(
        topic="tax-policy",
        event_type="tax_policy.updated",
        payload={"standard_deduction": deduction},
        actor="test",
        source="api",
    )
    return event.envelope_id


def test_the_live_page_names_only_the_topics_the_person_may_view():
    User.objects.create_user("outsider", password="x-unused-42")

    policy = _client("policy").get("/live/").content.decode()
    outsider = _client("outsider").get("/live/").content.decode()

    assert '<script id="live-topics" type="application/json">["irs.withholding", "tax-policy"]</script>' in policy
    assert '<script id="live-topics" type="application/json">[]</script>' in outsider


def test_a_reconnecting_page_gets_every_event_after_the_last_it_saw_in_order():
    ids = [_publish(deduction) for deduction in range(5)]

    answer = _client("policy").get("/live/events/", {"after": ids[1]}).json()

    assert [item["id"] for item in answer["events"]] == ids[2:]
    assert answer["more"] is False
    assert answer["events"][0]["payload"] == {"standard_deduction": 2}
    assert answer["events"][0]["status"] == "published"


def test_without_a_last_event_the_page_gets_the_newest():
    ids = [_publish(deduction) for deduction in range(3)]

    answer = _client("policy").get("/live/events/").json()

    assert [item["id"] for item in answer["events"]] == ids


def test_an_unknown_or_unseen_event_id_is_a_clear_400():
    event_id = _publish(1)
    User.objects.create_user("outsider", password="x-unused-42")

    unknown = _client("policy").get("/live/events/", {"after": "no-such-id"})
    unseen = _client("outsider").get("/live/events/", {"after": event_id})

    for response in (unknown, unseen):
        assert response.status_code == 400
        assert response.json() == {
            "errors": [{"path": "/after", "message": "is not an event id you may see: reload the page"}]
        }


def test_the_dashboard_charts_count_events_per_minute_and_open_dead_letters():
    from busapp.actions.dead_letters import dead_letter_create
    from busapp.models import Source, Topic

    for deduction in range(3):
        _publish(deduction)
    dead_letter_create(
        topic=Topic.objects.get(name="irs.withholding"), raw="{}", errors=[], source=Source.CLI, actor="cli:test"
    )

    series = _client("auditor").get("/dashboard/series/").json()

    assert (series["range"], series["bucket_seconds"], len(series["buckets"])) == ("1h", 60, 60)
    assert series["buckets"][-1][16:] == ":00+00:00"  # whole minutes, in UTC
    assert sum(series["events"]["tax-policy"][-2:]) == 3  # this minute (or the last, at a minute boundary)
    assert sum(series["events"]["tax-policy"]) == 3
    assert series["dead_letters_open"] == {"irs.withholding": 1, "tax-policy": 0}


@pytest.mark.parametrize(("chosen", "buckets"), [("24h", 24), ("7d", 168)])
def test_the_traffic_chart_counts_by_hour_over_a_day_or_a_week(chosen: str, buckets: int):
    from busapp.models import Event

    _publish(1)
    older = _publish(2)
    Event.objects.filter(envelope_id=older).update(timestamp=timezone.now() - dt.timedelta(hours=20))

    series = _client("auditor").get("/dashboard/series/", {"range": chosen}).json()

    assert (series["bucket_seconds"], len(series["buckets"])) == (3600, buckets)
    current = dt.datetime.fromisoformat(series["buckets"][-1])
    assert current.isoformat()[13:] == ":00:00+00:00"  # whole hours, in UTC
    assert dt.timedelta(0) <= timezone.now() - current < dt.timedelta(hours=1)  # the current hour, last
    assert sum(series["events"]["tax-policy"][-2:]) == 1
    assert sum(series["events"]["tax-policy"]) == 2  # the one from 20 hours ago too
    assert series["title"] == {"24h": "Events per hour, last 24 hours", "7d": "Events per hour, last 7 days"}[chosen]


def test_a_range_the_chart_does_not_have_is_refused_naming_the_ranges():
    response = _client("auditor").get("/dashboard/series/", {"range": "1y"})

    assert response.status_code == 400
    assert response.json() == {
        "errors": [{"path": "/range", "message": "is not a range the chart has: use one of 1h, 24h, 7d"}]
    }
