"""The dead-letter workbench: see why, fix in the generated form, replay to the topic once, or discard with a reason."""

import json
import re
from html import unescape

import pytest
from django.contrib.auth.models import User
from django.test import Client

from busapp.actions.dead_letters import dead_letter_create
from busapp.errors import FieldError
from busapp.models import AuditEntry, DeadLetter, DeadLetterStatus, Event, Source, Topic
from busapp.publishing import stream_key

pytestmark = pytest.mark.usefixtures("demo_committed", "bus")

HOSTILE = '<img src=x onerror="alert(1)"><script>alert(2)</script>'


def _client(username: str) -> Client:
    client = Client()
    client.force_login(User.objects.get(username=username))
    return client


def _letter(deduction=-5, note: str | None = None) -> DeadLetter:
    payload = {"standard_deduction": deduction} | ({"note": note} if note else {})
    return dead_letter_create(
        topic=Topic.objects.get(name="tax-policy"),
        raw=json.dumps({"type": "tax_policy.updated", "payload": payload}),
        errors=[{"path": "/payload/standard_deduction", "message": "must be 0 or more"}],
        source=Source.CLI,
        actor="cli:test",
    )


def _replay(client: Client, letter: DeadLetter, deduction: str):
    return client.post(
        f"/dlq/{letter.pk}/replay/", {"type": "tax_policy.updated", "/payload/standard_deduction": deduction}
    )


def _groups(html: str) -> list[tuple[str, ...]]:
    """The cause table's rows: topic, event type, cause, count, values seen."""
    rows = re.findall(r'<tr class="group">(.*?)</tr>', html, re.S)
    cells = [re.findall(r"<td[^>]*>(.*?)</td>", row, re.S) for row in rows]
    return [tuple(" ".join(re.sub(r"<[^>]+>", " ", cell).split()) for cell in row[:5]) for row in cells]


DEDUCTIONS_SEEN = "-5 , -14600 , -100 …"  # newest first, each once


def test_open_dead_letters_are_grouped_by_cause_whatever_values_they_carried():
    for deduction in (-5, -100, -14600, -5):
        _letter(deduction)
    dead_letter_create(
        topic=Topic.objects.get(name="tax-policy"),
        raw="not json",
        errors=[{"path": "", "message": "is not JSON"}],
        source=Source.EXTERNAL,
        actor="external",
    )

    html = _client("auditor").get("/dlq/").content.decode()

    assert _groups(html) == [
        (
            "tax-policy",
            "tax_policy.updated",
            "/payload/standard_deduction : must be 0 or more",
            "4",
            "-5 , -14600 , -100 …",
        ),
        ("tax-policy", "none named", "(the whole message) : is not JSON", "1", "—"),
    ]


def test_array_positions_are_one_cause_and_hostile_values_are_shown_as_text():
    topic = Topic.objects.get(name="tax-policy")
    for row, value in ((0, HOSTILE), (3, 2)):
        payload = {"brackets": [{"rate": 0.1}] * row + [{"rate": value}]}
        dead_letter_create(
            topic=topic,
            raw=json.dumps({"type": "tax_policy.updated", "payload": payload}),
            errors=[{"path": f"/payload/brackets/{row}/rate", "message": "must be 1 or less"}],
            source=Source.CLI,
            actor="cli:test",
        )

    html = _client("auditor").get("/dlq/").content.decode()

    (group,) = _groups(html)
    assert group[2:4] == ("/payload/brackets/*/rate : must be 1 or less", "2")
    assert "<img src=x" not in html
    assert "&lt;img src=x onerror=" in html


def test_a_dead_letter_shows_its_body_as_text_its_errors_and_a_form_filled_from_it():
    letter = _letter(-5, note=HOSTILE)

    html = _client("admin").get(f"/dlq/{letter.pk}/").content.decode()

    assert "<img src=x" not in html
    assert "<script>alert(2)" not in html
    assert "&lt;img src=x onerror=" in html
    assert "<code>/payload/standard_deduction</code>: must be 0 or more" in html
    assert 'name="/payload/standard_deduction" value="-5"' in html  # the form, filled from what arrived


def test_a_fixed_payload_is_replayed_to_the_topic_once_and_the_event_names_its_dead_letter(bus):
    letter = _letter(-5)
    admin = _client("admin")

    response = _replay(admin, letter, "15000")
    again = _replay(admin, letter, "15000")

    letter.refresh_from_db()
    event = Event.objects.get()
    assert response.status_code == 302
    assert response["Location"] == f"/events/{event.envelope_id}/"
    assert (letter.status, letter.replay_event, letter.replayed_by.username) == (
        DeadLetterStatus.REPLAYED,
        event,
        "admin",
    )
    assert (event.source, event.payload) == ("replay", {"standard_deduction": 15000})
    assert bus.xlen(stream_key("tax-policy")) == 1
    assert again.status_code == 400
    assert "already replayed" in again.content.decode()
    assert Event.objects.count() == 1
    entry = AuditEntry.objects.get(action="dead_letter.replay")
    assert (entry.actor_name, entry.details["event"]) == ("admin", event.envelope_id)
    assert f"dead letter #{letter.pk}" in admin.get(response["Location"]).content.decode()


def test_a_replay_that_still_fails_is_refused_with_its_errors_and_stays_open(bus):
    letter = _letter(-5)

    response = _replay(_client("admin"), letter, "-1")

    letter.refresh_from_db()
    assert response.status_code == 400
    assert re.search(
        r'id="f-payload-standard_deduction-error" role="alert">must be 0 or more',
        response.content.decode(),
    )
    assert letter.status == DeadLetterStatus.OPEN
    assert Event.objects.count() == 0
    assert bus.xlen(stream_key("tax-policy")) == 0


def test_discarding_needs_a_reason_and_is_audited():
    letter = _letter(-5)
    admin = _client("admin")

    without = admin.post(f"/dlq/{letter.pk}/discard/", {"reason": " "})
    discarded = admin.post(f"/dlq/{letter.pk}/discard/", {"reason": "a test from the mobile team"})

    letter.refresh_from_db()
    assert without.status_code == 400
    assert "reason: is required" in without.content.decode()
    assert discarded.status_code == 302
    assert (letter.status, letter.discard_reason) == (DeadLetterStatus.DISCARDED, "a test from the mobile team")
    assert AuditEntry.objects.filter(action="dead_letter.discard", actor_name="admin").exists()


@pytest.mark.parametrize("username", ["auditor", "policy"])
def test_replay_and_discard_need_the_manage_right_and_refusals_are_audited(username, bus):
    letter = _letter(-5)
    client = _client(username)

    page = client.get(f"/dlq/{letter.pk}/").content.decode()
    listing = client.get("/dlq/").content.decode()
    replay = _replay(client, letter, "15000")
    discard = client.post(f"/dlq/{letter.pk}/discard/", {"reason": "no"})

    assert 'id="replay"' not in page
    assert "Replay all" not in listing
    assert "Replay all 1…" in _client("admin").get("/dlq/").content.decode()
    assert replay.status_code == discard.status_code == 403
    assert AuditEntry.objects.filter(action="manage.refused", actor_name=username).count() == 2
    letter.refresh_from_db()
    assert letter.status == DeadLetterStatus.OPEN
    assert bus.xlen(stream_key("tax-policy")) == 0


def _arrived(payload: object, errors: list[FieldError], raw: str | None = None) -> DeadLetter:
    body = raw if raw is not None else json.dumps({"type": "tax_policy.updated", "payload": payload})
    return dead_letter_create(
        topic=Topic.objects.get(name="tax-policy"), raw=body, errors=errors, source=Source.API, actor="service:efile"
    )


def test_a_value_of_the_wrong_type_is_shown_at_its_field_in_a_text_input_with_its_error():
    letter = _arrived(
        {"standard_deduction": "15,000"}, [{"path": "/payload/standard_deduction", "message": "must be a number"}]
    )

    html = _client("admin").get(f"/dlq/{letter.pk}/").content.decode()

    field = re.search(r'<input type="(\w+)" id="f-payload-standard_deduction"[^>]*>', html)
    assert field is not None
    assert field[1] == "text"  # a number input would show nothing
    assert 'value="15,000"' in field[0]
    assert 'aria-invalid="true"' in field[0]
    assert re.search(r'id="f-payload-standard_deduction-error" role="alert">must be a number</p>', html)


def test_what_arrived_is_indented_and_an_error_about_the_whole_message_says_so():
    letter = _arrived(
        None, [{"path": "", "message": "is not JSON"}], raw='{"type":"tax_policy.updated","payload":{"a":1'
    )
    indented = _arrived({"standard_deduction": -5}, [{"path": "/payload/standard_deduction", "message": "x"}])

    broken = _client("admin").get(f"/dlq/{letter.pk}/").content.decode()
    pretty = _client("admin").get(f"/dlq/{indented.pk}/").content.decode()

    assert "<code>(the whole message)</code>: is not JSON" in broken
    assert '<pre class="json raw" id="arrived">{&quot;type&quot;:&quot;tax_policy.updated&quot;' in broken
    assert '"payload": {\n    "standard_deduction": -5\n  }' in unescape(pretty)
    assert "Exactly as it arrived" in pretty


def test_a_person_who_may_not_fix_a_letter_is_told_who_may():
    letter = _letter(-5)

    page = _client("auditor").get(f"/dlq/{letter.pk}/").content.decode()

    notice = re.search(r'<p class="notice" id="who-fixes">(.*?)</p>', page, re.S)
    assert notice is not None
    assert "needs the manage right on tax-policy, which admin" in notice[1]
    assert "auditor" not in notice[1]
    assert 'id="replay"' not in page


def test_a_letter_links_to_the_previous_and_next_open_letters_of_its_cause():
    first, other_cause, second, third = (
        _letter(-5),
        _arrived({}, [{"path": "", "message": "x"}]),
        _letter(-1),
        _letter(-9),
    )

    page = _client("auditor").get(f"/dlq/{second.pk}/").content.decode()
    last = _client("auditor").get(f"/dlq/{third.pk}/").content.decode()

    assert "Letter 2 of 3 open with this cause" in page
    assert f'href="/dlq/{first.pk}/" rel="prev"' in page
    assert f'href="/dlq/{third.pk}/" rel="next"' in page
    assert f"/dlq/{other_cause.pk}/" not in page
    assert "Letter 3 of 3" in last
    assert 'rel="next"' not in last
