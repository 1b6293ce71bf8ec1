"""Receipts: recorded once per (event, subscriber), checked against what the subscriber follows, each audited."""

from __future__ import annotations

import json
from typing import Any

import pytest
from django.utils import timezone

from busapp.actions.receipts import ReceiptIn, ReceiptRefusal, ReceiptRefusedError, receipt_record, receipts_record
from busapp.models import AuditAction, AuditEntry, Receipt, ReceiptVia
from tests.support import approved_withholding_event, publish_deduction

pytestmark = pytest.mark.usefixtures("demo")


def _receipt(event: Any, subscriber: str = "e-file", status: Any = "applied", detail: Any = "") -> ReceiptIn:
    envelope_id = getattr(event, "envelope_id", event)
    return ReceiptIn(subscriber, envelope_id, status, detail, timezone.now(), ReceiptVia.API)


def test_a_receipt_is_recorded_once_with_its_audit_entry_and_the_same_one_again_is_answered_with_it() -> None:
    event = publish_deduction(15000)

    first = receipt_record(_receipt(event), actor="service:e-file")
    again = receipt_record(_receipt(event), actor="service:e-file")

    assert first.created
    assert not again.created
    assert again.receipt == first.receipt
    assert Receipt.objects.filter(event=event).count() == 1
    entry = AuditEntry.objects.get(action=AuditAction.RECEIPT_RECORD)
    assert entry.target == f"event:{event.envelope_id}"
    assert entry.details == {"subscriber": "e-file", "status": "applied", "via": "api"}


def test_a_different_second_receipt_is_refused_as_a_conflict_and_the_first_stands() -> None:
    event = publish_deduction(15000)
    receipt_record(_receipt(event), actor="service:e-file")

    with pytest.raises(ReceiptRefusedError) as refused:
        receipt_record(_receipt(event, status="rejected", detail="no"), actor="service:e-file")

    assert refused.value.refusal == ReceiptRefusal.CONFLICT
    assert "already said 'applied'" in refused.value.errors[0]["message"]
    assert Receipt.objects.get(event=event).status == "applied"


@pytest.mark.parametrize(
    ("overrides", "refusal", "path", "words"),
    [
        ({"status": "done"}, ReceiptRefusal.INVALID, "/status", "'done' is not one of 'applied', 'rejected'"),
        ({"detail": "x" * 4097}, ReceiptRefusal.INVALID, "/detail", "is 4097 bytes: at most 4096"),
        ({"detail": "a\x00b"}, ReceiptRefusal.INVALID, "/detail", "NUL"),
        ({"detail": "\ud800"}, ReceiptRefusal.INVALID, "/detail", "lone surrogate"),
        ({"detail": 5}, ReceiptRefusal.INVALID, "/detail", "must be text"),
        ({"event": 7}, ReceiptRefusal.INVALID, "/event", "is required"),
        ({"event": "a\x00b"}, ReceiptRefusal.INVALID, "/event", "NUL"),
        ({"event": "no-such-event"}, ReceiptRefusal.UNKNOWN_EVENT, "/event", "no event 'no-such-event'"),
        ({"subscriber": "nobody"}, ReceiptRefusal.UNKNOWN_SUBSCRIBER, "/subscriber", "no subscriber"),
    ],
)
def test_bad_receipts_are_refused_at_their_field_and_nothing_is_recorded(
    overrides: dict[str, Any], refusal: ReceiptRefusal, path: str, words: str
) -> None:
    event = publish_deduction(15000)
    fields = {"event": event, "subscriber": "e-file", "status": "applied", "detail": "", **overrides}

    with pytest.raises(ReceiptRefusedError) as refused:
        receipt_record(_receipt(**fields), actor="service:e-file")

    assert refused.value.refusal == refusal
    assert refused.value.errors[0]["path"] == path
    assert words in refused.value.errors[0]["message"]
    assert not Receipt.objects.exists()
    assert not AuditEntry.objects.filter(action__startswith="receipt.").exists()


def test_a_receipt_for_a_topic_the_subscriber_does_not_follow_is_refused() -> None:
    event = approved_withholding_event()  # irs.withholding: e-file does not follow it

    with pytest.raises(ReceiptRefusedError) as refused:
        receipt_record(_receipt(event), actor="service:e-file")

    assert refused.value.refusal == ReceiptRefusal.NOT_FOLLOWED
    assert "e-file does not follow topic irs.withholding" in refused.value.errors[0]["message"]
    assert receipt_record(_receipt(event, "withholding-calculator"), actor="service:wc").created


def test_a_whole_batch_is_refused_for_one_bad_receipt_and_says_which() -> None:
    event = publish_deduction(15000)
    batch = [_receipt(event), _receipt(event, "mobile-tax-app", status="maybe")]

    with pytest.raises(ReceiptRefusedError) as refused:
        receipts_record(batch, actor="service:e-file", whole=True)

    assert refused.value.errors == [{"path": "/1/status", "message": refused.value.errors[0]["message"]}]
    assert not Receipt.objects.exists()


def test_many_receipts_of_a_subscriber_are_one_audit_entry_naming_each_event_by_status() -> None:
    events = [publish_deduction(15000 + n) for n in range(3)]
    batch = [
        _receipt(events[0]),
        _receipt(events[1], status="rejected", detail="deduction above our cap"),
        _receipt(events[2], status="ignored"),
        _receipt(events[0]),  # twice in one batch: once
    ]

    outcomes = receipts_record(batch, actor="system:receipts-stream", whole=False)

    assert [outcome.created for outcome in outcomes] == [True, True, True, False]
    entry = AuditEntry.objects.get(action=AuditAction.RECEIPT_RECORD_BATCH)
    assert entry.target == "subscriber:e-file"
    assert entry.details["events"] == {
        "applied": [events[0].envelope_id],
        "rejected": [events[1].envelope_id],
        "ignored": [events[2].envelope_id],
    }
    assert entry.details["rejected_details"] == {events[1].envelope_id: "deduction above our cap"}


def test_a_stream_entry_that_breaks_a_check_is_refused_alone_and_the_rest_of_its_batch_recorded(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from busapp.actions import receipts
    from busapp.publishing import RECEIPTS_STREAM, StreamEntry

    event = publish_deduction(15000)
    checks = receipts._field_problems

    def breaks_on_boom(receipt: ReceiptIn) -> Any:
        if receipt.detail == "boom":
            raise RuntimeError("a bug of ours")
        return checks(receipt)

    monkeypatch.setattr(receipts, "_field_problems", breaks_on_boom)
    entries = [
        StreamEntry(RECEIPTS_STREAM, f"1700000000000-{n}", "", json.dumps(body).encode())
        for n, body in enumerate(
            [
                {"event": event.envelope_id, "subscriber": "e-file", "status": "applied", "detail": "boom"},
                {"event": event.envelope_id, "subscriber": "mobile-tax-app", "status": "applied"},
            ]
        )
    ]

    result = receipts.receipts_stream_record(entries, wait_until=timezone.now())

    assert [receipt.subscriber.name for receipt in result.recorded] == ["mobile-tax-app"]
    assert dict(result.refused) == {"unprocessable": 1}
    assert "a bug of ours" in result.first_problem
