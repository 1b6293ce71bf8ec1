"""The history for auditors: filters and payload conditions, stable keyset pages, exports, one event's record."""

from __future__ import annotations

import csv
import datetime as dt
import io
import json
import re
import threading
from collections.abc import Callable, Iterator
from typing import cast

import pytest
from django.contrib.auth.models import User
from django.db import connection
from django.http import StreamingHttpResponse
from django.http.response import HttpResponseBase
from django.test import Client
from django.utils import timezone

from busapp.actions.publishing import event_publish_batch
from busapp.actions.requests import publish_request_decide
from busapp.models import AuditEntry, Event, EventStatus, SavedFilter, SchemaVersion, Source
from busapp.store import store
from tests.support import approved_withholding_event, withholding_request

pytestmark = pytest.mark.usefixtures("demo_committed", "bus")


def _client(username: str) -> Client:
    client = Client()
    client.force_login(User.objects.get(username=username))
    return client


def _publish(*payloads: dict, source: str = Source.API, actor: str = "svc:efile") -> list[Event]:
    items = [{"type": "tax_policy.updated", "payload": payload} for payload in payloads]
    return event_publish_batch(topic="tax-policy", items=items, actor=actor, source=source).events


def _listed(response) -> list[str]:
    """The envelope ids a history page lists, top to bottom."""
    return re.findall(r'href="/events/([0-9a-f-]{36})/"', response.content.decode())


def _streamed_body(response: HttpResponseBase) -> bytes:
    assert isinstance(response, StreamingHttpResponse)
    return b"".join(cast(Iterator[bytes], response.streaming_content))


def _next_link(page: str, rel: str = "next") -> str | None:
    """The query string of a page's Older (next) or Newer (prev) link."""
    found = re.search(rf'href="\?([^"]*)" rel="{rel}"', page)
    return found.group(1).replace("&amp;", "&") if found else None


def _ids(events: list[Event]) -> set[str]:
    return {event.envelope_id for event in events}


def test_a_payload_condition_finds_the_events_it_describes() -> None:
    events = _publish(*({"standard_deduction": amount} for amount in (5000, 12000, 15000, 20000, 14999.99)))
    response = _client("auditor").get("/events/", {"where": "standard_deduction >= 15000"})
    assert response.status_code == 200
    assert set(_listed(response)) == {events[2].envelope_id, events[3].envelope_id}


def test_conditions_on_text_nested_fields_and_contains_combine() -> None:
    ca, ny, ca_refund = _publish(
        {"standard_deduction": 1, "state": "CA", "taxpayer": {"state": "CA"}},
        {"standard_deduction": 2, "state": "NY", "taxpayer": {"state": "NY"}},
        {"standard_deduction": 3, "state": "CA", "taxpayer": {"state": "CA"}, "note": "Refund schedule 2027"},
    )
    client = _client("auditor")
    assert set(_listed(client.get("/events/", {"where": 'state = "CA"'}))) == _ids([ca, ca_refund])
    assert set(_listed(client.get("/events/", {"where": "taxpayer.state = NY"}))) == _ids([ny])
    both = client.get("/events/", {"where": 'state = "CA"\nnote contains "refund"'})
    assert _listed(both) == [ca_refund.envelope_id]
    # "!=" is about events that have the field: the ones without a note are not "not refunds".
    assert set(_listed(client.get("/events/", {"where": 'note != "x"'}))) == _ids([ca_refund])


def test_field_filters_narrow_by_topic_type_status_source_publisher_time_and_id() -> None:
    api = _publish({"standard_deduction": 1})[0]
    cli = _publish({"standard_deduction": 2}, source=Source.CLI, actor="cli:root")[0]
    old = _publish({"standard_deduction": 3})[0]
    Event.objects.filter(pk=old.pk).update(timestamp=timezone.now() - dt.timedelta(days=400))
    Event.objects.filter(pk=cli.pk).update(status=EventStatus.PENDING)
    client = _client("auditor")

    def listed(**params: str) -> set[str]:
        response = client.get("/events/", params)
        assert response.status_code == 200, response.content
        return set(_listed(response))

    assert listed(topic="tax-policy", type="tax_policy.updated") == _ids([api, cli, old])
    assert listed(topic="irs.withholding") == set()
    assert listed(source="cli") == _ids([cli])
    assert listed(status="pending") == _ids([cli])
    assert listed(publisher="svc:efile") == _ids([api, old])
    year_ago = (timezone.now() - dt.timedelta(days=365)).strftime("%Y-%m-%d %H:%M")
    assert listed(since=year_ago) == _ids([api, cli])
    assert listed(until=year_ago) == _ids([old])
    assert listed(envelope=api.envelope_id) == _ids([api])


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"where": "standard_deduction => 5"}, "unknown operator &#x27;=&gt;&#x27;"),
        ({"where": "standard_deduction >="}, "give a value after the operator"),
        ({"where": "15000 <= standard_deduction"}, "start with a field path"),
        ({"where": 'state = "CA'}, "is not a JSON value"),
        ({"where": "state > true"}, "compares numbers or text"),
        ({"where": "standard_deduction > 1e400"}, "is out of range"),
        ({"where": "standard_deduction > 99999999999999999999"}, "is out of range"),
        ({"where": 'state = "\\u0000"'}, "cannot hold the NUL character"),
        ({"since": "2026-02-01 00:00", "until": "2026-01-01 00:00"}, "the time range ends"),
        ({"since": "yesterday-ish"}, "Enter a valid date/time"),
        ({"status": "lost"}, "Select a valid choice"),
        ({"cursor": "b2xkZXN0:forged"}, "this page link was changed or is damaged"),
    ],
)
def test_bad_filters_get_a_clear_message_on_the_page_and_a_400(params: dict, message: str) -> None:
    _publish({"standard_deduction": 1})
    response = _client("auditor").get("/events/", params)
    assert response.status_code == 400
    assert message in response.content.decode()


def test_a_cursor_edited_to_point_elsewhere_is_refused() -> None:
    _publish(*({"standard_deduction": n} for n in range(60)))
    client = _client("auditor")
    older = _next_link(client.get("/events/").content.decode())
    assert older
    cursor = older.split("cursor=")[1]
    value, signature = cursor.split("%3A", 1)
    forged = value.replace("o", "n", 1) + "%3A" + signature
    assert client.get(f"/events/?cursor={forged}").status_code == 400


def _walk(client: Client, query: str = "", during_each_page: Callable[[], object] | None = None) -> list[str]:
    """Every envelope id, page by page, following the Older links."""
    seen, url = [], f"/events/?{query}"
    while url:
        page = client.get(url).content.decode()
        seen.extend(_listed_text(page))
        if during_each_page:
            during_each_page()
        older = _next_link(page)
        url = f"/events/?{older}" if older else ""
    return seen


def _listed_text(page: str) -> list[str]:
    return re.findall(r'href="/events/([0-9a-f-]{36})/"', page)


def test_keyset_pages_walk_the_whole_history_once_in_order_and_back() -> None:
    first = _publish(*({"standard_deduction": n} for n in range(70)))
    second = _publish(*({"standard_deduction": n} for n in range(70, 130)))
    client = _client("auditor")
    walked = _walk(client)
    expected = list(Event.objects.order_by("-timestamp", "-id").values_list("envelope_id", flat=True))
    assert walked == expected
    assert len(set(walked)) == len(first) + len(second) == 130
    # Newer from the second page leads back to the first.
    page_two = client.get(f"/events/?{_next_link(client.get('/events/').content.decode())}").content.decode()
    newer = _next_link(page_two, "prev")
    assert newer
    assert _listed_text(client.get(f"/events/?{newer}").content.decode()) == expected[:50]


def test_a_rare_condition_searches_a_stretch_per_page_and_the_walk_still_finds_every_match(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """With a scan budget of 40 events, 130 events and 4 matches: cut pages say how far they searched, none is lost."""
    monkeypatch.setattr("busapp.history.SCAN_BUDGET", 40)
    _publish(*({"standard_deduction": 15000 if n in (3, 64, 65, 129) else n} for n in range(130)))
    client = _client("auditor")
    query = "where=standard_deduction+%3D+15000"
    walked, url, cut_pages, last_page = [], f"/events/?{query}", 0, ""
    while url:
        last_page = client.get(url).content.decode()
        walked.extend(_listed_text(last_page))
        cut_pages += 'id="searched-to"' in last_page
        older = _next_link(last_page)
        url = f"/events/?{older}" if older else ""
    back, newer = _listed_text(last_page), _next_link(last_page, "prev")
    while newer:  # and back again, newest last: the same matches, each once
        page = client.get(f"/events/?{newer}").content.decode()
        back = _listed_text(page) + back
        newer = _next_link(page, "prev")
    expected = list(
        Event.objects.filter(payload__standard_deduction=15000)
        .order_by("-timestamp", "-id")
        .values_list("envelope_id", flat=True)
    )
    assert walked == expected
    assert back == expected
    assert len(expected) == 4
    assert cut_pages == 3  # 130 events at 40 a stretch: three stretches end before the history does
    first = client.get(f"/events/?{query}").content.decode()
    assert "checked against 40 events per page" in first


def test_pages_stay_stable_while_new_events_keep_arriving() -> None:
    before = _publish(*({"standard_deduction": n} for n in range(180)))
    stop = threading.Event()
    arrived: list[Event] = []

    def keep_publishing() -> None:
        try:
            while not stop.is_set():
                arrived.extend(_publish(*({"standard_deduction": n} for n in range(7))))
        finally:
            connection.close()

    writer = threading.Thread(target=keep_publishing)
    writer.start()
    try:
        walked = _walk(_client("auditor"), during_each_page=lambda: stop.wait(0.05))
    finally:
        stop.set()
        writer.join()
    assert arrived, "the writer published while the pages were read"
    assert len(walked) == len(set(walked)), "an event was listed twice"
    assert _ids(before) <= set(walked), "an event that existed before was skipped"


def test_policy_staff_see_only_their_topics_history() -> None:
    withholding = approved_withholding_event()
    outsider = User.objects.create_user("outsider")
    assert _listed(_client("outsider").get("/events/")) == []
    assert _listed(_client("auditor").get("/events/")) == [withholding.envelope_id]
    assert _client("outsider").get(f"/events/{withholding.envelope_id}/").status_code == 403
    assert outsider.pk


def test_an_export_holds_exactly_the_filtered_events_and_is_audited() -> None:
    events = _publish(
        *({"standard_deduction": amount, "note": "<script>alert(1)</script>"} for amount in range(0, 30000, 500))
    )
    client = _client("auditor")
    wanted = [event for event in events if event.payload["standard_deduction"] >= 15000]
    csv_response = client.get("/events/export.csv", {"where": "standard_deduction >= 15000"})
    assert csv_response.status_code == 200
    assert csv_response["Content-Type"].startswith("text/csv")
    rows = list(csv.DictReader(io.StringIO(_streamed_body(csv_response).decode())))
    assert [row["envelope_id"] for row in rows] == [
        event.envelope_id for event in sorted(wanted, key=lambda event: event.pk, reverse=True)
    ]
    assert {json.loads(row["payload"])["standard_deduction"] for row in rows} == set(range(15000, 30000, 500))
    stored_times = dict(Event.objects.values_list("envelope_id", "timestamp"))
    assert all(row["timestamp"] == stored_times[row["envelope_id"]].isoformat() for row in rows)
    assert rows[0]["topic"] == "tax-policy"
    assert rows[0]["schema_version"] == "1"

    ndjson = client.get("/events/export.ndjson", {"where": "standard_deduction >= 15000"})
    lines = _streamed_body(ndjson).decode().splitlines()
    records = [json.loads(line) for line in lines]
    stored = dict(Event.objects.values_list("envelope_id", "envelope"))
    assert {record["envelope_id"] for record in records} == _ids(wanted)
    assert all(record["envelope"] == json.loads(stored[record["envelope_id"]]) for record in records)

    exports = AuditEntry.objects.filter(action="events.export").order_by("seq")
    assert [(entry.details["format"], entry.details["rows"]) for entry in exports] == [("csv", 30), ("ndjson", 30)]
    assert exports[0].details["filter"] == {"where": ["standard_deduction >= 15000"]}
    assert exports[0].actor_name == "auditor"


def test_policy_staff_cannot_export_and_the_attempt_is_audited() -> None:
    _publish({"standard_deduction": 1})
    response = _client("policy").get("/events/export.csv")
    assert response.status_code == 403
    refusal = AuditEntry.objects.get(action="events.export.refused")
    assert refusal.actor_name == "policy"
    assert "Export these events" not in _client("policy").get("/events/").content.decode()


def test_the_event_record_shows_approval_provenance_audit_and_notices_an_edited_envelope() -> None:
    policy, policy2 = User.objects.get(username="policy"), User.objects.get(username="policy2")
    waiting = withholding_request(policy)
    publish_request_decide(request_id=waiting.pk, actor=policy2, approve=True, reason="matches the IRS notice")
    event = Event.objects.get(envelope_id=waiting.envelope_id)
    client = _client("auditor")
    page = client.get(f"/events/{event.envelope_id}/").content.decode()
    assert "valid</span> against schema v1" in page
    assert "unchanged</span>" in page
    assert "requested by policy" in page
    assert "by policy2" in page
    assert "matches the IRS notice" in page
    for action in ("event.publish", "publish_request.create", "publish_request.approve"):
        assert f"<code>{action}</code>" in page
    assert "&quot;brackets&quot;" in page  # the schema is shown

    Event.objects.filter(pk=event.pk).update(envelope=event.envelope.replace("2027-01-01", "2026-01-01"))
    page = client.get(f"/events/{event.envelope_id}/").content.decode()
    assert "changed</span> the stored envelope no longer matches" in page


def test_a_batch_events_record_finds_its_batch_audit_entry() -> None:
    events = _publish({"standard_deduction": 1}, {"standard_deduction": 2})
    page = _client("auditor").get(f"/events/{events[1].envelope_id}/").content.decode()
    assert "event.publish_batch" in page
    assert "unchanged</span>" in page


def test_saved_filters_belong_to_their_owner() -> None:
    client = _client("auditor")
    response = client.post(
        "/filters/", {"page": "events", "name": "Big deductions", "query": "where=standard_deduction+%3E%3D+15000"}
    )
    assert response.status_code == 302
    assert response["Location"] == "/events/?where=standard_deduction+%3E%3D+15000"
    assert "Big deductions" in client.get("/events/").content.decode()
    assert "Big deductions" not in _client("admin").get("/events/").content.decode()
    odd = client.post("/filters/", {"page": "events", "name": "Odd", "query": "topic=a\r\nSet-Cookie: x=1"})
    assert odd.status_code == 302
    assert "\n" not in odd["Location"]
    saved = SavedFilter.objects.get(name="Big deductions")
    assert _client("admin").post(f"/filters/{saved.pk}/delete/").status_code == 404
    client.post(f"/filters/{saved.pk}/delete/")
    assert list(SavedFilter.objects.values_list("name", flat=True)) == ["Odd"]


@pytest.mark.parametrize("address", ["/events/abc%00def/", "/events/?type=a%00b", "/api/events/?publisher=%00"])
def test_a_nul_in_the_address_is_refused_with_a_400_not_a_database_error(address: str) -> None:
    """PostgreSQL refuses NUL in any query: the address is refused before a view reads it, and says why."""
    response = _client("auditor").get(address)
    assert response.status_code == 400
    text = response.content.decode()
    assert "NUL character" in text
    if address.startswith("/api/"):
        assert set(response.json()) == {"errors"}


def _refusal(response) -> str:
    """The history page's errors about its conditions, as text."""
    assert response.status_code == 400, response.content
    found = re.findall(r'<p class="error" role="alert">(.*?)</p>', response.content.decode(), re.S)
    return " ".join(found).replace("&#x27;", "'").replace("&quot;", '"')


def test_a_question_asked_wrongly_is_refused_with_what_to_write_not_answered_with_nothing() -> None:
    _publish({"standard_deduction": 15000})
    client = _client("auditor")

    joined = _refusal(client.get("/events/", {"where": "standard_deduction >= 15000 and publisher = x"}))
    prefixed = _refusal(client.get("/events/", {"where": "payload.standard_deduction >= 15000"}))
    under_a_number = _refusal(client.get("/events/", {"topic": "tax-policy", "where": "standard_deduction.cap > 1"}))

    assert "the value 15000 and publisher = x has spaces: did you mean two lines?" in joined
    assert "no schema of your topics has a field payload.standard_deduction" in prefixed
    assert "leave out 'payload.'" in prefixed
    assert "standard_deduction" in prefixed.split("the fields are:")[1]
    assert "no schema of topic tax-policy has a field standard_deduction.cap" in under_a_number


def test_a_field_the_schemas_allow_but_do_not_declare_is_searched_with_a_word_on_the_page() -> None:
    (carrying,) = _publish({"standard_deduction": 1, "state": "CA"})

    response = _client("auditor").get("/events/", {"topic": "tax-policy", "where": 'state = "CA"'})

    page = response.content.decode().replace("&#x27;", "'")
    assert response.status_code == 200
    assert _listed(response) == [carrying.envelope_id]
    assert "No schema of topic tax-policy declares state: only events that carry it anyway" in page


def test_the_field_picker_offers_the_fields_of_the_chosen_topics_schemas() -> None:
    page = _client("auditor").get("/events/", {"topic": "tax-policy"}).content.decode()

    picker = re.search(r'<select id="field-picker"[^>]*>(.*?)</select>', page, re.S)
    assert picker is not None
    assert re.findall(r"<option>(.*?)</option>", picker[1]) == ["standard_deduction"]


def test_the_schema_fields_walk_arrays_combinations_and_open_parts() -> None:
    from busapp.schema_fields import payload_fields

    fields = payload_fields(
        [
            {
                "type": "object",
                "additionalProperties": False,
                "properties": {
                    "brackets": {"type": "array", "items": {"type": "object", "properties": {"rate": {}}}},
                    "meta": {"$ref": "#/$defs/meta"},
                },
                "allOf": [{"properties": {"year": {"type": "integer"}}}],
            }
        ]
    )

    assert fields.declares(("brackets", "3", "rate"))
    assert fields.declares(("year",))
    assert fields.declares(("meta", "anything", "below"))  # a $ref is open: not walked
    assert not fields.may_hold(("state",))  # the object is closed
    assert fields.listed() == ["brackets", "brackets.0", "brackets.0.rate", "meta", "year"]


def test_events_are_filtered_and_shown_by_the_schema_version_they_were_checked_against() -> None:
    from busapp.actions.registry import schema_version_create
    from busapp.models import EventType

    first = _publish({"standard_deduction": 1}, {"standard_deduction": 2})
    event_type = EventType.objects.get(topic__name="tax-policy", name="tax_policy.updated")
    schema = json.loads(json.dumps(SchemaVersion.objects.filter(event_type=event_type).order_by("-version")[0].schema))
    schema["properties"]["note"] = {"type": "string"}
    newer = schema_version_create(event_type=event_type, schema=schema, actor="admin", compatibility="none")
    (second,) = _publish({"standard_deduction": 3, "note": "v2"})
    client = _client("auditor")

    on_newer = client.get(
        "/events/", {"topic": "tax-policy", "type": "tax_policy.updated", "schema": str(newer.version)}
    )
    everything = client.get("/events/", {"topic": "tax-policy"}).content.decode()

    assert _listed(on_newer) == [second.envelope_id]
    assert set(_listed(client.get("/events/", {"schema": newer.version - 1}))) == _ids(first)
    assert (
        re.findall(r'<td class="num" data-label="Schema">v(\d+)</td>', everything)
        == [str(newer.version)] + [str(newer.version - 1)] * 2
    )


def test_time_presets_reach_back_from_now_and_refuse_times_of_their_own() -> None:
    recent, old = _publish({"standard_deduction": 1}, {"standard_deduction": 2})
    Event.objects.filter(pk=old.pk).update(timestamp=timezone.now() - dt.timedelta(hours=2))
    client = _client("auditor")

    assert _listed(client.get("/events/", {"period": "1h"})) == [recent.envelope_id]
    assert set(_listed(client.get("/events/", {"period": "24h"}))) == _ids([recent, old])
    mixed = client.get("/events/", {"period": "7d", "since": "2026-01-01 00:00"})
    assert "choose custom to give since and until" in _refusal(mixed)


def test_the_page_says_how_many_events_match_exactly_up_to_a_limit_then_about_or_more_than(monkeypatch) -> None:
    import busapp.history

    _publish({"standard_deduction": 1}, {"standard_deduction": 2}, {"standard_deduction": 3})
    client = _client("auditor")

    exact = client.get("/events/", {"topic": "tax-policy"}).content.decode()
    monkeypatch.setattr(busapp.history, "COUNT_EXACT_UP_TO", 2)
    beyond = client.get("/events/", {"topic": "tax-policy"}).content.decode()

    assert '<p class="match-count" id="match-count">3 events match.</p>' in exact
    said = re.search(r'id="match-count">(.*?)</p>', beyond)
    assert said is not None
    if store().rows_estimate(Event.objects.all()) is not None:  # PostgreSQL's SQL store: its planner estimates
        assert said[1].startswith("About ")
        assert said[1].endswith("match (the database's estimate).")
    else:  # SQLite, or the ORM store (the oracle) on either database
        assert said[1] == "More than 2 events match."


def _publish_in_order(*deductions: int) -> list[Event]:
    """One event per deduction, a second apart, oldest first: a history of changes and repeats."""
    events = [_publish({"standard_deduction": deduction})[0] for deduction in deductions]
    start = timezone.now() - dt.timedelta(hours=1)
    for offset, event in enumerate(events):
        Event.objects.filter(pk=event.pk).update(timestamp=start + dt.timedelta(seconds=offset))
    return events


def test_only_events_that_changed_a_field_answer_who_changed_it_and_when() -> None:
    first, _, raised, _, lowered = _publish_in_order(14600, 14600, 15000, 15000, 14600)
    params = {"topic": "tax-policy", "type": "tax_policy.updated", "changed": "standard_deduction"}

    response = _client("auditor").get("/events/", params)

    assert response.status_code == 200
    assert _listed(response) == [lowered.envelope_id, raised.envelope_id, first.envelope_id]  # newest first
    assert "match-count" not in response.content.decode()  # changes are found a stretch at a time, not counted


def test_changes_are_found_across_pages_and_stretches_each_once(monkeypatch) -> None:
    import busapp.history

    events = _publish_in_order(1, 1, 2, 2, 2, 3, 1, 1)
    expected = [events[index].envelope_id for index in (6, 5, 2, 0)]  # newest first
    monkeypatch.setattr(busapp.history, "CHANGED_STRETCH", 2)  # a stretch of two events a page: four pages
    client = _client("auditor")
    query = "topic=tax-policy&type=tax_policy.updated&changed=standard_deduction"

    found: list[str] = []
    pages = 0
    for _ in range(20):  # 8 events in stretches of 2: bounded
        page = client.get(f"/events/?{query}")
        found += _listed(page)
        pages += 1
        link = _next_link(page.content.decode())
        if link is None:
            break
        query = link
    assert found == expected  # each change once, its predecessor read across each stretch's edge
    assert pages >= 4


def test_the_changed_filter_needs_a_topic_a_type_and_a_field_they_have_and_is_not_exported() -> None:
    client = _client("auditor")
    base = {"topic": "tax-policy", "type": "tax_policy.updated"}

    no_type = client.get("/events/", {"topic": "tax-policy", "changed": "standard_deduction"})
    unknown = client.get("/events/", {**base, "changed": "payload.standard_deduction"})
    exported = client.get("/events/export.csv", {**base, "changed": "standard_deduction"})

    assert "choose a topic and an event type" in _refusal(no_type)
    assert "no schema of tax-policy's tax_policy.updated has a field payload.standard_deduction" in _refusal(unknown)
    assert exported.status_code == 400
    assert "leave out 'only where this field changed'" in exported.content.decode()
