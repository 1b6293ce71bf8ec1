"""The filter forms of the history and the audit log: they read the URL's query string and say what is wrong."""

from __future__ import annotations

import datetime as dt
import json
from typing import Any, cast

from django import forms
from django.conf import settings
from django.contrib.auth.models import Group
from django.forms.fields import InvalidJSONInput
from django.utils import timezone

from busapp.actions.registry import topic_name_problem
from busapp.errors import FieldError, HistoryQueryError, SchemaInvalidError
from busapp.history import HistoryFilter, PayloadCondition, conditions_parse, field_path_valid
from busapp.models import (
    APPLY_DEADLINE_DEFAULT,
    STREAM_RETENTION_MAX,
    STREAM_RETENTION_MIN,
    TOPIC_NAME_EXAMPLE,
    AuditAction,
    EventStatus,
    EventType,
    SchemaVersion,
    Source,
    Subscriber,
    Topic,
    validate_event_type_name,
    validate_stream_retention,
)
from busapp.permissions import TOPIC_RIGHTS, Role
from busapp.schema_fields import PayloadFields, payload_fields
from busapp.validation import json_parse, printable, schema_check, schema_uri

_ANY = [("", "any")]
_TIME_HELP = "UTC, like 2026-11-27 07:00"


class _TimeRangeForm(forms.Form):
    """``since`` and ``until`` in UTC, refused when the range ends before it starts."""

    since = forms.DateTimeField(required=False, help_text=_TIME_HELP)
    until = forms.DateTimeField(required=False, help_text=_TIME_HELP)

    def clean(self) -> dict[str, Any]:
        """Both ends in UTC; refuse one that UTC cannot hold, or a range the wrong way round, naming both ends."""
        cleaned = super().clean() or {}
        for name in ("since", "until"):
            value = cleaned.get(name)
            if value is None:
                continue
            try:
                # The databases compare in UTC: a time whose UTC falls outside years 1-9999 cannot be compared.
                cleaned[name] = value.astimezone(dt.UTC)
            except OverflowError:
                self.add_error(name, f"{value.isoformat()} is out of range: give a time between the years 1 and 9999")
        since, until = cleaned.get("since"), cleaned.get("until")
        if since and until and since > until:
            self.add_error(
                "until",
                f"the time range ends ({until:%Y-%m-%d %H:%M}) before it starts ({since:%Y-%m-%d %H:%M}): swap them",
            )
        return cleaned


# The history's time presets: how far back each reaches from now.
PERIODS = {
    "1h": dt.timedelta(hours=1),
    "24h": dt.timedelta(days=1),
    "7d": dt.timedelta(days=7),
    "30d": dt.timedelta(days=30),
}
PERIOD_CHOICES = [
    ("", "any time"),
    ("1h", "last hour"),
    ("24h", "last 24 hours"),
    ("7d", "last 7 days"),
    ("30d", "last month (30 days)"),
    ("custom", "custom: since and until"),
]


class EventFilterForm(_TimeRangeForm):
    """What the history page can be narrowed to; every field optional, every value from the URL."""

    topic = forms.ChoiceField(required=False)
    type = forms.CharField(required=False, max_length=200, label="Event type")
    schema = forms.IntegerField(
        required=False,
        min_value=1,
        max_value=2**31 - 1,
        label="Schema version",
        help_text="Like 3: the events checked against version 3 of their type",
    )
    period = forms.ChoiceField(required=False, choices=PERIOD_CHOICES, label="When")
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

    changed = forms.CharField(
        required=False,
        max_length=200,
        label="Only where this field changed",
        help_text="A field, like standard_deduction: each event whose value differs from its type's event before",
    )

    field_order = [
        "topic",
        "type",
        "schema",
        "status",
        "source",
        "publisher",
        "period",
        "since",
        "until",
        "envelope",
        "changed",
        "where",
    ]

    def __init__(self, *args: Any, topic_names: list[str], **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.topic_names = topic_names
        self.fields["topic"].choices = _ANY + [(name, name) for name in topic_names]  # type: ignore[attr-defined]

    def clean_where(self) -> tuple[PayloadCondition, ...]:
        """The payload conditions, parsed; a wrong one is refused with the rule it breaks."""
        try:
            return tuple(conditions_parse([self.cleaned_data.get("where") or ""]))
        except HistoryQueryError as error:
            raise forms.ValidationError([item["message"] for item in error.errors]) from None

    def clean(self) -> dict[str, Any]:
        """The fields, and each condition's field checked against the schemas of the chosen topics and type."""
        cleaned = super().clean()
        self._period_applied(cleaned)
        self._changed_checked(cleaned)
        self.notices: list[str] = []
        conditions = cleaned.get("where") or ()
        if conditions:
            fields = self.payload_fields()
            scope = f"topic {cleaned['topic']}" if cleaned.get("topic") else "your topics"
            for condition in conditions:
                if fields.declares(condition.path):
                    continue
                if fields.may_hold(condition.path) and not _payload_prefixed(condition, fields):
                    self.notices.append(undeclared_field_notice(condition, fields, scope))
                else:
                    self.add_error("where", unknown_field_message(condition, fields, scope))
        return cleaned

    def _period_applied(self, cleaned: dict[str, Any]) -> None:
        """A preset period sets ``since`` to that long ago; it takes no times of its own."""
        delta = PERIODS.get(cleaned.get("period") or "")
        if delta is None:
            return
        if cleaned.get("since") or cleaned.get("until"):
            self.add_error("period", "a preset reaches back from now: choose custom to give since and until")
            return
        cleaned["since"] = timezone.now() - delta

    def _changed_checked(self, cleaned: dict[str, Any]) -> None:
        """The changed-field filter: a field path some payload of the chosen topic and type can hold."""
        text = (cleaned.get("changed") or "").strip()
        if not text:
            cleaned["changed"] = ()
            return
        if not (cleaned.get("topic") and (cleaned.get("type") or "").strip()):
            message = "choose a topic and an event type: a change is against the event before of its type"
            self.add_error("changed", message)
            return
        path = tuple(text.split("."))
        fields = self.payload_fields()
        prefixed = path[0] == "payload" and len(path) > 1 and fields.declares(path[1:])
        if not field_path_valid(text) or not fields.may_hold(path) or prefixed:
            scope = f"{cleaned['topic']}'s {cleaned['type'].strip()}"
            hint = "fields are of the payload already: leave out 'payload.'; " if prefixed else ""
            self.add_error("changed", f"no schema of {scope} has a field {text}; {hint}{_fields_shown(fields)}")
            return
        cleaned["changed"] = path

    def payload_fields(self) -> PayloadFields:
        """The payload fields of every schema version of the chosen topic (or the offered ones) and type."""
        data = getattr(self, "cleaned_data", {})
        topic = data.get("topic") or self.data.get("topic") or ""
        names = [topic] if topic in self.topic_names else self.topic_names
        versions = SchemaVersion.objects.filter(event_type__topic__name__in=names)
        type_name = (data.get("type") or "").strip()
        if type_name:
            versions = versions.filter(event_type__name=type_name)
        return payload_fields(versions.values_list("schema", flat=True))

    def history_filter(self) -> HistoryFilter:
        """The valid form as the filter the history module runs."""
        data = self.cleaned_data
        return HistoryFilter(
            topic=data["topic"],
            event_type=data["type"].strip(),
            schema_version=data["schema"],
            status=data["status"],
            source=data["source"],
            publisher=data["publisher"].strip(),
            since=data["since"],
            until=data["until"],
            envelope_id=data["envelope"].strip(),
            conditions=data["where"],
            changed=data["changed"],
        )


# An unknown field's refusal lists at most this many of the fields there are.
FIELDS_LISTED = 20


def _payload_prefixed(condition: PayloadCondition, fields: PayloadFields) -> bool:
    """Whether the condition names a declared field with ``payload.`` before it."""
    path = condition.path
    return path[0] == "payload" and len(path) > 1 and fields.declares(path[1:])


def _fields_shown(fields: PayloadFields) -> str:
    """The declared fields, the first FIELDS_LISTED of them."""
    known = fields.listed()
    if not known:
        return "they declare no fields"
    return "the fields are: " + ", ".join(known[:FIELDS_LISTED]) + (", …" if len(known) > FIELDS_LISTED else "")


def unknown_field_message(condition: PayloadCondition, fields: PayloadFields, scope: str) -> str:
    """Why a condition's field is refused: no payload could carry it; what to write instead; the fields there are."""
    hint = (
        "conditions are on the payload already: leave out 'payload.'; " if _payload_prefixed(condition, fields) else ""
    )
    dotted = ".".join(condition.path)
    return f"condition '{condition}': no schema of {scope} has a field {dotted}; {hint}{_fields_shown(fields)}"


def undeclared_field_notice(condition: PayloadCondition, fields: PayloadFields, scope: str) -> str:
    """What the page says of a field the schemas allow but do not declare: only events that carry it can match."""
    dotted = ".".join(condition.path)
    return (
        f"No schema of {scope} declares {dotted}: only events that carry it anyway (their schemas allow other"
        f" fields) can match; {_fields_shown(fields)}"
    )


def audit_action_choices() -> list[tuple[str, Any]]:
    """The audit filter's choices: any action, then each family (``event.`` takes them all) with its actions."""
    families: dict[str, list[tuple[str, str]]] = {}
    for action in AuditAction:
        family = action.value.split(".")[0] + "."
        families.setdefault(family, [(family, f"every {family} action")]).append((action.value, action.label))
    return [("", "any action"), *((family, choices) for family, choices in sorted(families.items()))]


class AuditFilterForm(_TimeRangeForm):
    """What the audit log can be narrowed to: who, what, to what, when."""

    actor = forms.CharField(required=False, max_length=150)
    action = forms.ChoiceField(
        required=False, choices=audit_action_choices, help_text="A family (event.) takes all its actions"
    )
    target = forms.CharField(required=False, max_length=200, help_text="Like event:<id> or topic:tax-policy")

    field_order = ["actor", "action", "target", "since", "until"]


# The /access/ pages: grants, roles and service tokens. Each form names what it refuses, field by field.

# A time typed as ISO text in UTC; the page shows the local time beside it (frame.js).
_UTC_TIME_ATTRS = {"data-utc-time": "", "placeholder": "2027-01-31 09:00", "autocomplete": "off"}
_EXPIRY_HELP = "UTC; leave empty for no expiry. The right stops working at this moment."


class _ExpiryForm(forms.Form):
    """An optional expiry, refused when it is not in the future."""

    expires_at = forms.DateTimeField(
        required=False,
        label="Expires (UTC)",
        help_text=_EXPIRY_HELP,
        widget=forms.DateTimeInput(
            attrs=_UTC_TIME_ATTRS,
            format="%Y-%m-%d %H:%M",
        ),
        input_formats=["%Y-%m-%dT%H:%M", "%Y-%m-%dT%H:%M:%S", "%Y-%m-%d %H:%M", "%Y-%m-%d %H:%M:%S"],
    )

    def clean_expires_at(self) -> dt.datetime | None:
        """The expiry, if it is still ahead."""
        value: dt.datetime | None = self.cleaned_data.get("expires_at")
        if value is not None and value <= timezone.now():
            raise forms.ValidationError(f"{value:%Y-%m-%d %H:%M} UTC has passed: choose a later time, or none")
        return value


class GrantForm(_ExpiryForm):
    """Give one or more rights on one or more topics to a person or a group, saying why."""

    field_order = ["principal", "topics", "rights", "reason", "expires_at"]

    principal = forms.ChoiceField(label="To", help_text="A person, or a group (every member holds the right).")
    topics = forms.MultipleChoiceField(widget=forms.CheckboxSelectMultiple)
    rights = forms.MultipleChoiceField(
        widget=forms.CheckboxSelectMultiple, choices=[(right, right.removesuffix("_topic")) for right in TOPIC_RIGHTS]
    )
    reason = forms.CharField(
        max_length=500, widget=forms.Textarea(attrs={"rows": 2}), help_text="Kept in the audit log."
    )

    def __init__(self, *args: Any, principals: list[tuple[str, str]], topic_names: list[str], **kwargs: Any) -> None:
        kwargs.setdefault("auto_id", "grant_%s")  # unique ids: the forms share a page
        super().__init__(*args, **kwargs)
        cast(forms.ChoiceField, self.fields["principal"]).choices = [("", "choose…"), *principals]
        cast(forms.ChoiceField, self.fields["topics"]).choices = [(name, name) for name in topic_names]


class RevokeForm(forms.Form):
    """Take back the chosen grants, saying why."""

    grants = forms.MultipleChoiceField(
        widget=forms.CheckboxSelectMultiple, error_messages={"required": "tick at least one grant"}
    )
    reason = forms.CharField(max_length=500, help_text="Kept in the audit log.")

    def __init__(self, *args: Any, grant_keys: list[str], **kwargs: Any) -> None:
        kwargs.setdefault("auto_id", "revoke_%s")  # unique ids: the forms share a page
        super().__init__(*args, **kwargs)
        cast(forms.ChoiceField, self.fields["grants"]).choices = [(key, key) for key in grant_keys]


class RoleForm(forms.Form):
    """Put a person in a role, or take them out of it."""

    username = forms.ChoiceField(label="Person")
    role = forms.ChoiceField(choices=[(role.value, role.value) for role in Role])
    member = forms.TypedChoiceField(
        label="Change",
        choices=[("1", "add to the role"), ("0", "remove from the role")],
        coerce=lambda value: value == "1",
    )
    reason = forms.CharField(max_length=500, help_text="Kept in the audit log.")

    def __init__(self, *args: Any, usernames: list[str], **kwargs: Any) -> None:
        kwargs.setdefault("auto_id", "role_%s")  # unique ids: the forms share a page
        super().__init__(*args, **kwargs)
        cast(forms.ChoiceField, self.fields["username"]).choices = [
            ("", "choose…"),
            *[(name, name) for name in usernames],
        ]


class ServiceTokenForm(_ExpiryForm):
    """A token for a named service, scoped to topics and to publish and/or view."""

    field_order = ["name", "topics", "can_publish", "can_view", "subscriber", "expires_at"]

    name = forms.CharField(max_length=100, label="Service", help_text="It publishes as 'service:<name>'.")
    topics = forms.MultipleChoiceField(widget=forms.CheckboxSelectMultiple)
    can_publish = forms.BooleanField(required=False, initial=True, label="may publish")
    can_view = forms.BooleanField(required=False, initial=True, label="may view history and dead letters")
    subscriber = forms.ModelChoiceField(
        queryset=Subscriber.objects.all(),
        to_field_name="name",
        required=False,
        empty_label="none",
        help_text="The subscriber whose receipts it posts (POST /api/events/<id>/receipts/); it needs no publish "
        "right for them.",
    )

    def __init__(self, *args: Any, topic_names: list[str], **kwargs: Any) -> None:
        kwargs.setdefault("auto_id", "token_%s")  # unique ids: the forms share a page
        super().__init__(*args, **kwargs)
        cast(forms.ChoiceField, self.fields["topics"]).choices = [(name, name) for name in topic_names]


class CarriedJSONField(forms.JSONField):
    """A JSON text box that refuses, with the path, what the bus cannot carry.

    Nested over 64 levels, NUL, lone surrogates: Django's own field recursed out on deep text
    and failed to show surrogates (500s).
    """

    def to_python(self, value: Any) -> Any:
        """The parsed value, or a ValidationError naming the path and the rule."""
        if self.disabled or value in self.empty_values or not isinstance(value, str):
            return super().to_python(value)
        errors = json_parse(value)[1]
        if errors:
            raise forms.ValidationError(
                [f"{error['path'] or 'the text'} {error['message']}" for error in errors], code="invalid"
            )
        return super().to_python(value)  # now safe: the text is plain JSON

    def bound_data(self, data: Any, initial: Any) -> Any:
        """What was typed, shown back as typed when it cannot be carried."""
        if not self.disabled and isinstance(data, str) and json_parse(data)[1]:
            return InvalidJSONInput(printable(data))
        return super().bound_data(data, initial)


# Topics in the dashboard: created with their first event type and schema, edited on the topic page.

# What the schema box holds at first: a small object schema the author edits.
EXAMPLE_SCHEMA = {
    "type": "object",
    "properties": {
        "effective_date": {"type": "string", "format": "date", "description": "When the change takes effect"},
        "amount": {"type": "integer", "minimum": 0, "description": "The new amount, in whole dollars"},
    },
    "required": ["effective_date", "amount"],
    "additionalProperties": False,
}


class SchemaTextField(CarriedJSONField):
    """A JSON Schema typed in a box: refused like any carried JSON, shown back indented."""

    def prepare_value(self, value: Any) -> Any:
        """The schema as indented JSON text (what was typed, when it could not be read)."""
        if isinstance(value, InvalidJSONInput):
            return value
        return json.dumps(value, ensure_ascii=False, indent=2)


class _TopicFieldsForm(forms.Form):
    """What a topic's editor sets: description, owner, stream retention."""

    description = forms.CharField(required=False, widget=forms.Textarea(attrs={"rows": 2}))
    owner = forms.ModelChoiceField(
        queryset=Group.objects.order_by("name"),
        required=False,
        empty_label="(no owner)",
        help_text="The group that answers for the topic. It grants no right: rights are granted at /access/.",
    )
    stream_retention = forms.IntegerField(
        label="Stream retention (events)",
        validators=[validate_stream_retention],
        help_text=(
            f"Events kept in the topic's Redis stream, between {STREAM_RETENTION_MIN:,} and {STREAM_RETENTION_MAX:,}."
        ),
    )


class TopicCreateForm(_TopicFieldsForm):
    """A new topic with its first event type and that type's first schema."""

    field_order = [
        "name",
        "description",
        "owner",
        "sensitive",
        "stream_retention",
        "type_name",
        "type_description",
        "schema",
    ]

    name = forms.CharField(
        widget=forms.TextInput(attrs={"autocomplete": "off", "spellcheck": "false", "autocapitalize": "none"}),
        help_text=(
            f"agency.domain.event, like {TOPIC_NAME_EXAMPLE}: lowercase letters, digits, '.', '-' and '_'. "
            "It is the Redis channel subscribers listen on, and never changes."
        ),
    )
    sensitive = forms.BooleanField(
        required=False,
        label="Sensitive: every publish needs a second person's approval",
        help_text="Set here freely (no events yet); later it changes only when a second bus admin approves.",
    )
    type_name = forms.CharField(
        label="First event type",
        validators=[validate_event_type_name],
        help_text="Dotted lowercase words, like tax_policy.updated.",
    )
    type_description = forms.CharField(
        label="Event type description", required=False, widget=forms.Textarea(attrs={"rows": 2})
    )
    schema = SchemaTextField(
        label="Its first schema (JSON Schema, Draft 2020-12)",
        widget=forms.Textarea(attrs={"rows": 16, "spellcheck": "false"}),
        error_messages={"required": "is required: a JSON Schema object describing the payload ({} describes nothing)"},
        help_text="Version 1 of the event type's payload. Checked before anything is saved.",
    )

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.fields["stream_retention"].initial = settings.BUS_STREAM_MAXLEN
        self.fields["schema"].initial = EXAMPLE_SCHEMA

    def clean_name(self) -> str:
        """The name, if it follows the naming rule and no topic has it yet."""
        name: str = self.cleaned_data["name"]
        problem = topic_name_problem(name)
        if problem:
            raise forms.ValidationError(problem)
        return name

    def clean(self) -> dict[str, Any]:
        """The schema checked too, so that every problem is shown at once (the action checks it all again)."""
        cleaned = super().clean() or {}
        if "schema" in cleaned:
            uri = schema_uri(self.data.get("name", ""), self.data.get("type_name", ""), 1)
            try:
                schema_check(cleaned["schema"], uri=uri)
            except SchemaInvalidError as error:
                self.add_error("schema", str(error))
        return cleaned


class TopicEditForm(_TopicFieldsForm):
    """A topic's description, owner and stream retention; its name and ``sensitive`` are not fields here."""

    field_order = ["description", "owner", "stream_retention", "reason"]

    reason = forms.CharField(
        required=False, max_length=500, label="Why (optional, kept in the audit log)", widget=forms.TextInput()
    )

    def __init__(self, *args: Any, topic: Topic, **kwargs: Any) -> None:
        kwargs.setdefault("auto_id", "edit_%s")  # unique ids: the topic page has other forms
        kwargs.setdefault(
            "initial",
            {"description": topic.description, "owner": topic.owner_id, "stream_retention": topic.stream_retention},
        )
        super().__init__(*args, **kwargs)
        self.topic = topic

    def clean(self) -> dict[str, Any]:
        """Refuse a posted name or ``sensitive``: the name never changes, and the flag changes only by four eyes."""
        cleaned = super().clean() or {}
        topic = self.topic
        if "name" in self.data and self.data["name"] != topic.name:
            self.add_error(None, "name: a topic's name never changes (subscribers listen on it); create a new topic")
        if "sensitive" in self.data:
            self.add_error(
                None,
                f"sensitive: changes only when a second bus admin approves it, at /topics/{topic.name}/sensitivity/",
            )
        return cleaned


class SubscriberForm(forms.Form):
    """A service to register: its name (its consumer group's too), what it does, its team and who to call."""

    name = forms.CharField(max_length=64, help_text="Lowercase letters, digits and hyphens, like e-file.")
    description = forms.CharField(required=False, widget=forms.Textarea(attrs={"rows": 2}))
    owner = forms.ModelChoiceField(queryset=Group.objects.order_by("name"), required=False, label="Owner (a team)")
    contact = forms.CharField(max_length=200, required=False, help_text="Who to call when it drifts.")

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("auto_id", "subscriber_%s")  # unique ids: the forms share a page
        super().__init__(*args, **kwargs)


class FollowForm(forms.Form):
    """A topic a subscriber follows (some types, or all) and its apply deadline."""

    subscriber = forms.ModelChoiceField(queryset=Subscriber.objects.all())
    topic = forms.ModelChoiceField(queryset=Topic.objects.order_by("name"), to_field_name="name")
    event_types = forms.ModelMultipleChoiceField(
        queryset=EventType.objects.select_related("topic"),
        required=False,
        widget=forms.CheckboxSelectMultiple,
        help_text="None ticked: every type of the topic.",
    )
    apply_deadline = forms.IntegerField(
        min_value=1,
        max_value=7 * 24 * 3600,
        initial=APPLY_DEADLINE_DEFAULT,
        label="Apply deadline (seconds)",
        help_text="From publish to the subscriber's receipt; later, it counts as overdue.",
    )

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("auto_id", "follow_%s")
        super().__init__(*args, **kwargs)


def problems_shown(form: forms.Form, problems: list[FieldError]) -> None:
    """Put each of an action's problems at its field (``/name`` at name), the rest above the form."""
    for problem in problems:
        field = problem["path"].lstrip("/").split("/")[0]
        if field in form.fields:
            form.add_error(field, problem["message"])
        else:
            form.add_error(None, problem["message"])
