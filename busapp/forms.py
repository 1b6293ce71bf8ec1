"""The filter forms of the history and the audit log: they read the URL's query string and say what is wrong."""

from __future__ import annotations

import datetime as dt
from typing import Any

from django import forms

from busapp.history import HistoryFilter, HistoryQueryError, PayloadCondition, conditions_parse
from busapp.models import EventStatus, Source

_ANY = [("", "any")]
_TIME_HELP = "UTC, like 2026-11-27 07:00"


class _TimeRangeForm(forms.Form):
    """``since`` and ``until`` in UTC, refused when the range ends before it starts."""

    since = forms.DateTimeField(required=False, help_text=_TIME_HELP)
    until = forms.DateTimeField(required=False, help_text=_TIME_HELP)

    def clean(self) -> dict[str, Any]:
        """Refuse a time range the wrong way round, naming both ends."""
        cleaned = super().clean() or {}
        since, until = cleaned.get("since"), cleaned.get("until")
        if since and until and since > until:
            self.add_error(
                "until",
                f"the time range ends ({until:%Y-%m-%d %H:%M}) before it starts ({since:%Y-%m-%d %H:%M}): swap them",
            )
        return cleaned


class EventFilterForm(_TimeRangeForm):
    """What the history page can be narrowed to; every field optional, every value from the URL."""

    topic = forms.ChoiceField(required=False)
    type = forms.CharField(required=False, max_length=200, label="Event type")
    status = forms.ChoiceField(required=False, choices=_ANY + list(EventStatus.choices))
    source = forms.ChoiceField(required=False, choices=_ANY + list(Source.choices))
    publisher = forms.CharField(required=False, max_length=150)
    envelope = forms.CharField(required=False, max_length=128, label="Envelope id")
    where = forms.CharField(
        required=False,
        label="Payload conditions",
        widget=forms.Textarea(attrs={"rows": 2, "placeholder": 'standard_deduction >= 15000\nstate = "CA"'}),
        help_text=(
            "One a line: field path, operator (= != > >= < <= contains), value. A condition few events meet "
            "reads far back: narrow by topic or time for a faster answer."
        ),
    )

    field_order = ["topic", "type", "status", "source", "publisher", "since", "until", "envelope", "where"]

    def __init__(self, *args: Any, topic_names: list[str], **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.fields["topic"].choices = _ANY + [(name, name) for name in topic_names]  # type: ignore[attr-defined]

    def clean_where(self) -> tuple[PayloadCondition, ...]:
        """The payload conditions, parsed; a wrong one is refused with the rule it breaks."""
        try:
            return tuple(conditions_parse([self.cleaned_data.get("where") or ""]))
        except HistoryQueryError as error:
            raise forms.ValidationError([item["message"] for item in error.errors]) from None

    def history_filter(self) -> HistoryFilter:
        """The valid form as the filter the history module runs."""
        data = self.cleaned_data
        return HistoryFilter(
            topic=data["topic"],
            event_type=data["type"].strip(),
            status=data["status"],
            source=data["source"],
            publisher=data["publisher"].strip(),
            since=data["since"],
            until=data["until"],
            envelope_id=data["envelope"].strip(),
            conditions=data["where"],
        )


class AuditFilterForm(_TimeRangeForm):
    """What the audit log can be narrowed to: who, what, to what, when."""

    actor = forms.CharField(required=False, max_length=150)
    action = forms.CharField(required=False, max_length=64, help_text="Like event.publish; event. takes them all")
    target = forms.CharField(required=False, max_length=200, help_text="Like event:<id> or topic:tax-policy")

    field_order = ["actor", "action", "target", "since", "until"]


def utc_text(value: dt.datetime | None) -> str:
    """A time as the filter forms show it."""
    return value.astimezone(dt.UTC).strftime("%Y-%m-%d %H:%M:%S") if value else ""
