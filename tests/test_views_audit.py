"""The audit log page: who may read it, its filters and pages, the chain's status (broken shown in red), exports."""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterator
from typing import cast

import pytest
from django.contrib.auth.models import User
from django.core.management import call_command
from django.core.management.base import CommandError
from django.db import connection, transaction
from django.http import HttpResponse, StreamingHttpResponse
from django.http.response import HttpResponseBase
from django.test import Client
from django.utils.html import strip_tags

from busapp.audit import AuditRecord, audit_append
from busapp.models import AuditAction, AuditCheck, AuditEntry
from tests.test_audit import _append_only_trigger_disabled

pytestmark = pytest.mark.usefixtures("demo")


def _client(username: str) -> Client:
    client = Client()
    client.force_login(User.objects.get(username=username))
    return client


def _things(count: int, actor: str = "svc:test") -> None:
    with transaction.atomic():
        audit_append(
            actor=actor,
            records=[AuditRecord(AuditAction.USER_CHANGE, f"thing:{n}", {"n": n}) for n in range(count)],
        )


def _text(response: HttpResponseBase) -> str:
    """The page as a reader sees it: tags gone, runs of white space one space."""
    assert isinstance(response, HttpResponse)
    return " ".join(strip_tags(response.content.decode()).split())


def _body(response: HttpResponseBase) -> str:
    assert isinstance(response, StreamingHttpResponse)
    return b"".join(cast(Iterator[bytes], response.streaming_content)).decode()


def test_only_auditors_and_bus_admins_read_the_audit_log() -> None:
    assert _client("auditor").get("/audit/").status_code == 200
    assert _client("admin").get("/audit/").status_code == 200
    assert _client("policy").get("/audit/").status_code == 403
    assert "/audit/" not in _client("policy").get("/").content.decode()


def test_filters_narrow_by_actor_action_family_target_and_pages_walk_back() -> None:
    _things(70, actor="svc:one")
    _things(3, actor="svc:two")
    client = _client("auditor")
    page = client.get("/audit/", {"actor": "svc:two"}).content.decode()
    assert page.count("<code>user.change</code>") == 3
    page = client.get("/audit/", {"action": "user."}).content.decode()
    assert page.count("<code>user.change</code>") == 50
    assert 'rel="next"' in page
    page = client.get("/audit/", {"target": "thing:7", "actor": "svc:one"}).content.decode()
    assert page.count("<code>user.change</code>") == 1


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"since": "2026-02-01 00:00", "until": "2026-01-01 00:00"}, "the time range ends"),
        ({"cursor": "o12:forged"}, "this page link was changed or is damaged"),
        ({"since": "not a time"}, "Enter a valid date/time"),
    ],
)
def test_bad_audit_filters_get_a_message_and_a_400(params: dict, message: str) -> None:
    response = _client("auditor").get("/audit/", params)
    assert response.status_code == 400
    assert message in response.content.decode()


def test_the_page_shows_the_verified_head_to_write_down() -> None:
    _things(5)
    client = _client("auditor")
    assert "has not been checked yet" in client.get("/audit/").content.decode()
    call_command("verify_audit_log", stdout=io.StringIO())
    head = AuditEntry.objects.order_by("-seq").first()
    assert head is not None
    page = _text(client.get("/audit/"))
    assert f"Entries #1 to #{head.seq} hold: none of them was changed, removed or put out of order." in page
    assert f"Last check: entries #1 to #{head.seq}, at " in page
    assert "by the command line (" in page
    assert "No newer entries: every entry has been checked." in page
    assert head.hash in page


def test_the_banner_says_which_entries_each_check_covered_and_what_is_left() -> None:
    _things(3)
    call_command("verify_audit_log", stdout=io.StringIO())  # the whole chain
    whole_through = AuditEntry.objects.order_by("-seq").first().seq  # type: ignore[union-attr]
    _things(4)
    client = _client("auditor")
    page = _text(client.get("/audit/"))
    assert f"4 newer entries, #{whole_through + 1} on, not checked yet." in page

    client.post("/audit/check/")  # only the new entries
    head = AuditEntry.objects.order_by("-seq").first().seq  # type: ignore[union-attr]
    page = _text(client.get("/audit/"))
    assert f"Entries #1 to #{head} hold" in page
    assert f"Last check: entries #{whole_through + 1} to #{head}, at " in page
    assert "by auditor." in page
    assert f"Last check of the whole chain: entries #1 to #{whole_through}, at " in page
    assert "by the command line (" in page


def test_an_entry_edited_with_raw_sql_is_shown_broken_in_red_after_the_check() -> None:
    _things(5)
    victim = AuditEntry.objects.get(target="thing:2")
    with _append_only_trigger_disabled(), connection.cursor() as cursor:
        cursor.execute("UPDATE busapp_auditentry SET details = %s WHERE seq = %s", ['{"n": 200}', victim.seq])
    with pytest.raises(CommandError, match=f"#{victim.seq}"):
        call_command("verify_audit_log", stdout=io.StringIO())
    page = _client("auditor").get("/audit/").content.decode()
    assert 'class="chain card broken"' in page
    assert f"The chain is broken at entry #{victim.seq}" in page
    assert "thing:2" in page
    assert "&quot;n&quot;: 200" in page  # what the entry says now
    assert AuditCheck.objects.first().broken_seq == victim.seq  # type: ignore[union-attr]


def test_check_now_verifies_new_entries_and_says_so() -> None:
    _things(3)
    client = _client("auditor")
    response = client.post("/audit/check/", follow=True)
    assert "The chain holds through entry" in response.content.decode()
    assert AuditCheck.objects.count() == 1
    assert _client("policy").post("/audit/check/").status_code == 403


def test_the_export_holds_the_filtered_entries_and_is_itself_audited() -> None:
    _things(12)
    client = _client("auditor")
    rows = list(csv.DictReader(io.StringIO(_body(client.get("/audit/export.csv", {"action": "user.change"})))))
    assert sorted(int(json.loads(row["details"])["n"]) for row in rows) == list(range(12))
    lines = _body(client.get("/audit/export.ndjson", {"target": "thing:3"})).splitlines()
    assert [json.loads(line)["details"] for line in lines] == [{"n": 3}]
    exports = AuditEntry.objects.filter(action="audit.export").order_by("seq")
    assert [entry.details["rows"] for entry in exports] == [12, 1]
    assert exports[0].details["filter"] == {"action": "user.change"}


def test_the_action_filter_offers_every_action_of_the_enum_by_family() -> None:
    from busapp.models import AuditAction

    page = _client("auditor").get("/audit/").content.decode()
    assert all(f'<option value="{action.value}"' in page for action in AuditAction)
    assert '<option value="dead_letter.">every dead_letter. action</option>' in page
    assert _client("auditor").get("/audit/", {"action": "thing.happen"}).status_code == 400
