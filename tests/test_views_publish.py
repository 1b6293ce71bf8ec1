"""Policy staff publish through the generated form: preview, confirm once; each refusal is clear, writes nothing."""

import json
import re

import pytest
from django.contrib.auth.models import User
from django.test import Client

from busapp.models import AuditEntry, Event, EventStatus
from busapp.publishing import stream_key
from tests.conftest import DEMO_PASSWORD

pytestmark = pytest.mark.usefixtures("demo_committed")

FIELD = "/payload/standard_deduction"
PUBLISH = "/topics/tax-policy/publish/"
CONFIRM = "/topics/tax-policy/publish/confirm/"


def _client(username: str) -> Client:
    client = Client()
    client.force_login(User.objects.get(username=username))
    return client


def _envelope(response) -> dict:
    """The envelope the preview page shows."""
    html = response.content.decode().replace("&quot;", '"')
    found = re.search(r'<pre class="json envelope">(.*?)</pre>', html, re.S)
    assert found, "the page shows no envelope"
    return json.loads(found.group(1))


def _token(response) -> str:
    found = re.search(r'name="token" value="([^"]+)"', response.content.decode())
    assert found, "the page carries no preview token"
    return found.group(1)


def _preview(client: Client, deduction: str, **extra: str):
    return client.post(PUBLISH, {"type": "tax_policy.updated", "action": "preview", FIELD: deduction, **extra})


def _field_error(response, path: str) -> str:
    """The error shown right under the input named ``path``."""
    html = response.content.decode()
    dom_id = "f" + re.sub(r"[^A-Za-z0-9_-]", "-", path)
    found = re.search(rf'<p class="error" id="{dom_id}-error" role="alert">(.*?)</p>', html, re.S)
    return found.group(1) if found else ""


def test_anonymous_people_are_sent_to_sign_in():
    for path in ("/", "/topics/", "/topics/tax-policy/", PUBLISH):
        response = Client().get(path)
        assert response.status_code == 302
        assert response["Location"].startswith("/accounts/login/?next=")


def test_signing_in_with_the_demo_password_opens_the_dashboard():
    client = Client()
    response = client.post("/accounts/login/", {"username": "policy", "password": DEMO_PASSWORD})
    assert (response.status_code, response["Location"]) == (302, "/")

    dashboard = client.get("/")
    assert dashboard.status_code == 200
    assert b"tax-policy" in dashboard.content
    assert b"Policy publishers" in dashboard.content


def test_a_wrong_password_says_so_and_signs_nobody_in():
    client = Client()
    response = client.post("/accounts/login/", {"username": "policy", "password": "nope"})
    assert response.status_code == 200
    assert b"did not match" in response.content
    assert client.get("/").status_code == 302


def test_the_form_is_generated_from_the_schema():
    response = _client("policy").get(PUBLISH)

    html = response.content.decode()
    assert response.status_code == 200
    assert f'name="{FIELD}"' in html
    assert re.search(rf'<input type="number" id="[^"]+" name="{FIELD}" value="" step="any" min="0"', html)
    assert "Standard deduction" in html  # the schema's title as the label
    assert "The new standard deduction, in US dollars." in html  # its description as help text


def test_preview_shows_the_exact_envelope_and_who_listens(bus):
    subscriber = bus.pubsub()
    subscriber.subscribe("tax-policy")

    response = _preview(_client("policy"), "15000")

    assert response.status_code == 200
    html = response.content.decode()
    envelope = _envelope(response)
    assert envelope["payload"] == {"standard_deduction": 15000}
    assert (envelope["type"], envelope["topic"], envelope["schema_version"]) == ("tax_policy.updated", "tax-policy", 1)
    assert (envelope["source"], envelope["publisher"]) == ("form", "policy")
    assert re.search(r'<strong class="subscribers">1</strong> subscriber on channel', html)
    assert Event.objects.count() == 0  # a preview publishes nothing
    subscriber.close()


def test_confirm_publishes_the_previewed_event_once_even_when_posted_twice(bus):
    client = _client("policy")
    token = _token(_preview(client, "15000"))

    first = client.post(CONFIRM, {"token": token})
    first_page = client.get(first["Location"])
    second = client.post(CONFIRM, {"token": token})
    second_page = client.get(second["Location"])

    event = Event.objects.get()
    assert first.status_code == second.status_code == 302
    assert first["Location"] == second["Location"] == f"/topics/tax-policy/published/{event.envelope_id}/"
    assert (event.status, event.source, event.publisher_name) == (EventStatus.PUBLISHED, "form", "policy")
    assert event.payload == {"standard_deduction": 15000}
    assert bus.xlen(stream_key("tax-policy")) == 1
    assert event.envelope_id in first_page.content.decode()
    assert b"<h1>Published</h1>" in first_page.content
    went_out = f'id="went-out">{event.published_at:%Y-%m-%d %H:%M:%S} UTC</time>'
    assert went_out in first_page.content.decode()  # when it went out, not only that it did
    assert b"already confirmed; nothing was published twice" in second_page.content
    assert b"already confirmed" not in first_page.content


def test_the_envelope_id_shown_in_the_preview_is_the_one_published(bus):
    client = _client("policy")
    preview = _preview(client, "15000")
    shown = _envelope(preview)["id"]

    client.post(CONFIRM, {"token": _token(preview)})

    [(_, fields)] = bus.xrange(stream_key("tax-policy"))
    assert json.loads(fields[b"event"])["id"] == shown


@pytest.mark.parametrize(
    ("entered", "message"),
    [
        ("-5", "must be 0 or more"),
        ("abc", "must be a number"),
        ("", "Enter the standard deduction"),
    ],
)
def test_a_bad_value_is_shown_next_to_its_field_with_the_value_kept_and_nothing_published(bus, entered, message):
    response = _preview(_client("policy"), entered)

    assert response.status_code == 400
    assert _field_error(response, FIELD) == message
    assert f'name="{FIELD}" value="{entered}"' in response.content.decode()
    assert Event.objects.count() == 0
    assert bus.xlen(stream_key("tax-policy")) == 0


def test_a_payload_over_64_kib_is_refused_with_its_size():
    payload = json.dumps({"standard_deduction": 1, "note": "x" * 70_000})

    response = _client("policy").post(
        PUBLISH, {"type": "tax_policy.updated", "mode": "raw", "action": "preview", "payload_json": payload}
    )

    assert response.status_code == 400
    assert "the limit is 65,536 bytes: send IDs, not PDFs" in response.content.decode()
    assert Event.objects.count() == 0


def test_raw_json_mode_explains_broken_json_and_previews_valid_json():
    client = _client("policy")
    broken = client.post(
        PUBLISH, {"type": "tax_policy.updated", "mode": "raw", "payload_json": '{"standard_deduction": '}
    )
    valid = client.post(
        PUBLISH, {"type": "tax_policy.updated", "mode": "raw", "payload_json": '{"standard_deduction": 1}'}
    )

    assert broken.status_code == 400
    assert "/payload: is not valid JSON: Expecting value" in broken.content.decode()
    assert ">{&quot;standard_deduction&quot;: </textarea>" in broken.content.decode()  # what was typed stays
    assert valid.status_code == 200
    assert "Confirm and publish" in valid.content.decode()


def test_a_tampered_event_type_is_refused_by_name():
    response = _client("policy").post(PUBLISH, {"type": "tax_policy.deleted", FIELD: "1"})

    assert response.status_code == 400
    assert (
        "unknown event type &#x27;tax_policy.deleted&#x27; on topic &#x27;tax-policy&#x27;" in response.content.decode()
    )


def test_a_tampered_or_borrowed_confirmation_publishes_nothing(bus):
    policy, policy2 = _client("policy"), _client("policy2")
    token = _token(_preview(policy, "15000"))

    tampered = policy.post(CONFIRM, {"token": token[:-3] + "abc"})
    borrowed = policy2.post(CONFIRM, {"token": token})

    assert tampered.status_code == borrowed.status_code == 400
    assert "was changed after it was shown" in tampered.content.decode()
    assert "made by someone else" in borrowed.content.decode()
    assert Event.objects.count() == 0
    assert bus.xlen(stream_key("tax-policy")) == 0


def test_going_back_from_the_preview_keeps_the_values():
    client = _client("policy")
    token = _token(_preview(client, "15000"))

    response = client.post(PUBLISH, {"type": "tax_policy.updated", "action": "edit", "token": token})

    assert response.status_code == 200
    assert f'name="{FIELD}" value="15000"' in response.content.decode()


@pytest.mark.parametrize("method", ["get", "post"])
def test_people_without_the_publish_right_get_403_and_the_attempt_is_audited(method, bus):
    response = getattr(_client("auditor"), method)(PUBLISH, {"type": "tax_policy.updated", FIELD: "1"})

    assert response.status_code == 403
    entry = AuditEntry.objects.get(action="publish.refused")
    assert (entry.actor_name, entry.target, entry.details["method"]) == ("auditor", "topic:tax-policy", method.upper())
    assert Event.objects.count() == 0


def test_only_publishers_see_the_publish_button():
    assert b'href="/topics/tax-policy/publish/"' in _client("policy").get("/topics/tax-policy/").content
    assert b'href="/topics/tax-policy/publish/"' not in _client("auditor").get("/topics/tax-policy/").content


def test_a_post_without_the_csrf_token_is_refused():
    client = Client(enforce_csrf_checks=True)
    client.force_login(User.objects.get(username="policy"))

    response = client.post(PUBLISH, {"type": "tax_policy.updated", FIELD: "15000"})

    assert response.status_code == 403
    assert Event.objects.count() == 0


def test_arrays_of_objects_enums_and_dates_become_the_payload():
    client = _client("policy")
    response = client.post(
        "/topics/irs.withholding/publish/",
        {
            "type": "withholding_table.published",
            "/payload/tax_year": "2027",
            "/payload/effective_date": "2027-01-01",
            "/payload/filing_status": '"married_joint"',
            "/payload/brackets/0/up_to": "11000",
            "/payload/brackets/0/rate": "0.1",
            "/payload/brackets/3/up_to": "44725",  # row 1 and 2 were removed in the page
            "/payload/brackets/3/rate": "0.12",
        },
    )

    assert response.status_code == 200
    envelope = _envelope(response)
    assert envelope["payload"] == {
        "tax_year": 2027,
        "effective_date": "2027-01-01",
        "filing_status": "married_joint",
        "brackets": [{"up_to": 11000, "rate": 0.1}, {"up_to": 44725, "rate": 0.12}],
    }


def test_an_error_inside_an_array_row_is_shown_on_that_rows_field():
    response = _client("policy").post(
        "/topics/irs.withholding/publish/",
        {
            "type": "withholding_table.published",
            "/payload/tax_year": "2027",
            "/payload/effective_date": "2027-01-01",
            "/payload/brackets/0/up_to": "11000",
            "/payload/brackets/0/rate": "1.5",
        },
    )

    assert response.status_code == 400
    assert _field_error(response, "/payload/brackets/0/rate") == "must be 1 or less"


def test_pages_carry_a_content_security_policy_without_unsafe_inline():
    response = _client("policy").get(PUBLISH)

    policy = {
        directive.split()[0]: directive.split()[1:] for directive in response["Content-Security-Policy"].split("; ")
    }
    assert policy["script-src"] == policy["style-src"] == policy["default-src"] == ["'self'"]
    assert policy["object-src"] == policy["frame-ancestors"] == ["'none'"]
    assert "unsafe-inline" not in response["Content-Security-Policy"]
    assert (response["Referrer-Policy"], response["X-Content-Type-Options"]) == ("same-origin", "nosniff")
    admin_page = _client("admin").get("/admin/")
    assert "Content-Security-Policy" not in admin_page  # the Django admin's inline script and styles work


def test_a_payload_with_markup_is_shown_as_text(bus):
    from busapp.actions.publishing import event_publish

    event_publish(
        topic="tax-policy",
        event_type="tax_policy.updated",
        payload={"standard_deduction": 1, "note": "<script>alert(1)</script><img src=x onerror=alert(2)>"},
        actor="test",
        source="api",
    )
    client = _client("policy")

    for path in ("/topics/tax-policy/", f"/events/{Event.objects.get().envelope_id}/"):
        html = client.get(path).content.decode()
        assert "<script>alert(1)" not in html
        assert "<img src=x" not in html
        assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html


def test_with_redis_down_the_result_says_pending_and_why_and_nothing_is_lost(outage_redis):
    client = _client("policy")
    token = _token(_preview(client, "15000"))
    outage_redis.stop()

    response = client.post(CONFIRM, {"token": token})
    page = client.get(response["Location"]).content.decode()

    event = Event.objects.get()
    assert event.status == EventStatus.PENDING
    assert "Accepted, waiting for Redis" in page
    assert "is not reachable" in page  # the reason, as the relay will retry it
    assert event.envelope_id in page


def test_the_form_lists_fields_in_the_order_the_schema_author_wrote_them():
    html = _client("policy").get("/topics/irs.withholding/publish/").content.decode()

    names = re.findall(r'name="(/payload/[^"]+)"', html)
    assert names[:5] == [  # PostgreSQL's jsonb would sort keys shortest first: rate before up_to
        "/payload/tax_year",
        "/payload/effective_date",
        "/payload/filing_status",
        "/payload/brackets/0/up_to",
        "/payload/brackets/0/rate",
    ]


def test_a_refused_form_opens_on_a_summary_that_links_to_each_field_and_says_error_in_its_title():
    response = _preview(_client("policy"), "-5")

    page = response.content.decode()
    assert response.status_code == 400
    assert "<title>Error: Publish to tax-policy · HMS Bus Admin</title>" in page
    summary = re.search(r'<div class="error-summary" id="error-summary"[^>]*>(.*?)</div>', page, re.S)
    assert summary is not None
    assert '<a href="#f-payload-standard_deduction">Standard deduction: must be 0 or more</a>' in summary[1]
