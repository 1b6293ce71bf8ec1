"""What the API reads and writes: publish bodies, their answers, topics with their event types and schemas."""

from __future__ import annotations

import json
from typing import Any

from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import extend_schema_field, inline_serializer
from rest_framework import serializers

from busapp.actions.reasons import REASON_MAX_CHARACTERS
from busapp.actions.receipts import ENVELOPE_ID_MAX
from busapp.history import PAGE_SIZE
from busapp.models import (
    RECEIPT_DETAIL_MAX_BYTES,
    TOPIC_NAME_MAX_LENGTH,
    Compatibility,
    CompatibilityMode,
    CompatibilityPolicy,
    DeadLetter,
    Event,
    EventStatus,
    EventType,
    Receipt,
    ReceiptStatus,
    ReceiptVia,
    SchemaVersion,
    SchemaVersionState,
    Topic,
)

BATCH_MAX_EVENTS = 1000
PAGE_LIMIT_MAX = 200


class EventInSerializer(serializers.Serializer[Any]):
    """One event to publish: its type on the topic and its payload."""

    type = serializers.CharField(max_length=200, help_text="The event type, like 'tax_policy.updated'.")
    payload = serializers.DictField(help_text="Checked against the type's active JSON Schema version.")


class ObjectListField(serializers.ListField):
    """A list of JSON objects, checked for shape only: the service checks each item against its schema.

    DRF's ``DictField`` child copied every item key by key, 6% of a 1,000-event batch's time.
    """

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(child=serializers.DictField(), **kwargs)  # the child documents the items' type

    def run_child_validation(self, data: list[Any]) -> list[Any]:
        """Each item must be an object; errors are keyed by index, as DRF keys a list's."""
        wrong = {str(index): ["must be an object"] for index, item in enumerate(data) if not isinstance(item, dict)}
        if wrong:
            raise serializers.ValidationError(wrong)
        return list(data)


class BatchInSerializer(serializers.Serializer[Any]):
    """Up to 1,000 events for one topic, published in one transaction and one Redis round trip."""

    events = ObjectListField(
        min_length=1,
        max_length=BATCH_MAX_EVENTS,
        error_messages={
            "min_length": "send at least one event",
            "max_length": f"a batch holds at most {BATCH_MAX_EVENTS} events: split it",
        },
        help_text='Each {"type": ..., "payload": {...}}; an invalid one is dead-lettered, the others published.',
    )


class PublishedSerializer(serializers.Serializer[Any]):
    """The answer to a publish: the envelope as it went (or will go) on the bus."""

    id = serializers.CharField(help_text="The envelope id.")
    status = serializers.ChoiceField(choices=EventStatus.choices, help_text="pending: Redis is down, queued.")
    event = serializers.DictField(help_text="The envelope: id, type, timestamp, topic, schema_version, payload ...")


class ErrorSerializer(serializers.Serializer[Any]):
    """One problem: where (a JSON pointer into the request) and what to do about it."""

    path = serializers.CharField()
    message = serializers.CharField()


class ErrorsSerializer(serializers.Serializer[Any]):
    """Every refusal under /api/ answers with this shape."""

    def get_fields(self) -> dict[str, serializers.Field[Any, Any, Any, Any]]:
        """``errors`` (declared here: the name is taken by ``Serializer.errors``)."""
        return {"errors": ErrorSerializer(many=True)}


class BatchItemResultSerializer(serializers.Serializer[Any]):
    """What became of one item of a batch."""

    index = serializers.IntegerField()
    status = serializers.ChoiceField(choices=["published", "pending", "dead_lettered"])
    id = serializers.CharField(required=False, help_text="The envelope id of a published or pending event.")
    dead_letter = serializers.IntegerField(required=False, help_text="The dead letter's id.")

    def get_fields(self) -> dict[str, serializers.Field[Any, Any, Any, Any]]:
        """The declared fields and ``errors`` (the name is taken by ``Serializer.errors``)."""
        return {**super().get_fields(), "errors": ErrorSerializer(many=True, required=False)}


class BatchResultSerializer(serializers.Serializer[Any]):
    """The answer to a batch: one result per item, in order, and the counts."""

    results = BatchItemResultSerializer(many=True)
    published = serializers.IntegerField()
    pending = serializers.IntegerField()
    dead_lettered = serializers.IntegerField()


class SchemaVersionSerializer(serializers.ModelSerializer[SchemaVersion]):
    """An active schema version, with the schema as its author wrote it."""

    schema = serializers.JSONField(source="authored")

    class Meta:
        model = SchemaVersion
        fields = ["version", "schema", "fingerprint", "compatibility", "created_at"]


class EventTypeSerializer(serializers.ModelSerializer[EventType]):
    """An event type and its active schema versions, newest first."""

    schema_versions = SchemaVersionSerializer(many=True, source="active_versions")

    class Meta:
        model = EventType
        fields = ["name", "description", "schema_versions"]


class TopicSerializer(serializers.ModelSerializer[Topic]):
    """A topic, its event types, and whether the caller may publish to it."""

    event_types = EventTypeSerializer(many=True)
    can_publish = serializers.SerializerMethodField()

    class Meta:
        model = Topic
        fields = ["name", "description", "sensitive", "can_publish", "event_types"]

    def get_can_publish(self, topic: Topic) -> bool:
        """True when the caller may publish here (a sensitive topic still refuses API publishes)."""
        return topic.name in self.context.get("publishable", set())


class TopicListSerializer(serializers.Serializer[Any]):
    """The answer to a topic list: every topic the caller may see, by name."""

    topics = TopicSerializer(many=True)


# Reads of the history, schema versions and dead letters.


class PageQuerySerializer(serializers.Serializer[Any]):
    """Where a list answer starts and how long it is: the ``next`` cursor of the page before, and a page size."""

    cursor = serializers.CharField(
        required=False, help_text="The `next` of the page before; without it, the newest page."
    )
    limit = serializers.IntegerField(
        required=False, default=PAGE_SIZE, min_value=1, max_value=PAGE_LIMIT_MAX, help_text="How many per page."
    )


class EventRecordSerializer(serializers.ModelSerializer[Event]):
    """An event in the history: its envelope as it went on the bus, where it is, and who sent it when."""

    id = serializers.CharField(source="envelope_id", help_text="The envelope id.")
    topic = serializers.CharField(source="topic.name")
    type = serializers.CharField(source="event_type.name")
    publisher = serializers.CharField(source="publisher_name", help_text="A person's name, or service:<name>.")
    accepted_at = serializers.DateTimeField(source="created_at", help_text="When the bus accepted (recorded) it.")
    envelope = serializers.SerializerMethodField()

    class Meta:
        model = Event
        fields = [
            "id",
            "topic",
            "type",
            "timestamp",
            "status",
            "source",
            "publisher",
            "not_approved",
            "stream_id",
            "accepted_at",
            "published_at",
            "envelope",
        ]

    @extend_schema_field(OpenApiTypes.OBJECT)
    def get_envelope(self, event: Event) -> Any:
        """The envelope: id, type, timestamp, topic, schema_version, source, publisher, payload."""
        return json.loads(event.envelope)


class EventDetailSerializer(EventRecordSerializer):
    """One event's record: the history's fields, its schema version, and the dead letter it was replayed from."""

    schema_version = serializers.IntegerField(source="schema_version.version", help_text="Validated against it.")
    replayed_from = serializers.IntegerField(
        source="replayed_from_letter", allow_null=True, help_text="The dead letter's id, if it is a replay of one."
    )

    class Meta(EventRecordSerializer.Meta):
        fields = [*EventRecordSerializer.Meta.fields, "schema_version", "replayed_from"]


# A CloudEvents 1.0 structured JSON event (``Accept: application/cloudevents+json``). Built by inline_serializer:
# its attributes ``source`` and ``data`` are names a Serializer class body already uses.
CloudEventSerializer = inline_serializer(
    name="CloudEvent",
    fields={
        "specversion": serializers.CharField(help_text="Always 1.0."),
        "id": serializers.CharField(help_text="The envelope id."),
        "source": serializers.URLField(help_text="The topic's URL in this API."),
        "type": serializers.CharField(help_text="The event type's name."),
        "time": serializers.DateTimeField(required=False, help_text="The envelope's timestamp, RFC 3339 in UTC."),
        "datacontenttype": serializers.CharField(help_text="Always application/json."),
        "dataschema": serializers.URLField(help_text="The URL of the schema version the payload was checked against."),
        "hmstopic": serializers.CharField(help_text="Extension: the topic's name."),
        "hmsschemaversion": serializers.IntegerField(help_text="Extension: the schema version's number."),
        "hmspublisher": serializers.CharField(help_text="Extension: who published it (a person, or service:<name>)."),
        "hmspublishedvia": serializers.CharField(help_text="Extension: the envelope's source (api, form, cli...)."),
        "data": serializers.JSONField(help_text="The envelope's payload."),
    },
)


class EventPageSerializer(serializers.Serializer[Any]):
    """A page of the history, newest first, and the cursor of the next (older) page."""

    events = EventRecordSerializer(many=True)
    next = serializers.CharField(allow_null=True, help_text="Send as `cursor` for the next page; null at the end.")
    searched_to = serializers.DateTimeField(
        allow_null=True,
        help_text="Set when payload conditions read their 20,000 events before the page filled: every match "
        "newer than this time is on this page or before it; `next` searches on.",
    )


CATCH_UP_PAGE_SIZE = 100
CATCH_UP_LIMIT_MAX = 500  # a page of 500 envelopes of at most 64 KiB each stays under 32 MiB


class CatchUpQuerySerializer(serializers.Serializer[Any]):
    """Where a catch-up starts (after an envelope id), of which type, and how many per page."""

    after = serializers.CharField(
        required=False,
        max_length=128,
        help_text="The envelope id of the last event heard (or the `next` of the page before); "
        "without it, from the topic's oldest event.",
    )
    type = serializers.CharField(required=False, max_length=200, help_text="Only events of this type.")
    limit = serializers.IntegerField(
        required=False,
        default=CATCH_UP_PAGE_SIZE,
        min_value=1,
        max_value=CATCH_UP_LIMIT_MAX,
        help_text="How many per page.",
    )


@extend_schema_field(OpenApiTypes.OBJECT)
class EnvelopeField(serializers.Field[Any, Any, Any, Any]):
    """An event's envelope (read only), parsed from the JSON that went on the bus and otherwise unchanged."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(read_only=True, **kwargs)

    def to_representation(self, value: Event) -> Any:
        """The envelope: id, type, timestamp, topic, schema_version, source, publisher, payload."""
        return json.loads(value.envelope)


class CatchUpPageSerializer(serializers.Serializer[Any]):
    """A topic's published envelopes after a position, oldest first, and where the next page starts."""

    events = serializers.ListField(
        child=EnvelopeField(), help_text="Envelopes as they went on the bus, in (timestamp, id) order."
    )
    next = serializers.CharField(
        allow_null=True,
        help_text="Send as `after` for the next page: the last envelope id here (the `after` sent, when empty).",
    )
    more = serializers.BooleanField(help_text="More events were already there: ask again at once with `next`.")


class EventInForceSerializer(serializers.ModelSerializer[Event]):
    """The event in force of a type: its envelope as it went on the bus, and when."""

    event = EnvelopeField(source="*", help_text="The envelope, as subscribers heard it.")
    id = serializers.CharField(source="envelope_id", help_text="The envelope id: send it as `after` to catch up.")

    class Meta:
        model = Event
        fields = ["event", "id", "status", "timestamp", "published_at"]


class SchemaVersionRecordSerializer(SchemaVersionSerializer):
    """A schema version in any state (enabled, deprecated, disabled), with the schema as its author wrote it."""

    class Meta(SchemaVersionSerializer.Meta):
        fields = ["version", "schema", "fingerprint", "compatibility", "state", "state_changed_at", "created_at"]


class SchemaVersionListSerializer(serializers.Serializer[Any]):
    """An event type's schema versions, newest first."""

    topic = serializers.CharField()
    type = serializers.CharField()
    schema_versions = SchemaVersionRecordSerializer(many=True)


class SchemaVersionInSerializer(serializers.Serializer[Any]):
    """A new schema version: the JSON Schema, and what it must keep of the version before it."""

    schema = serializers.DictField(help_text="A JSON Schema (Draft 2020-12) for the payload.")
    compatibility = serializers.ChoiceField(
        choices=Compatibility.choices,
        default=Compatibility.BACKWARD,
        help_text="backward: events valid under the newest version stay valid; none: any change.",
    )


class DeadLetterSerializer(serializers.ModelSerializer[DeadLetter]):
    """Something that arrived for a topic and failed validation, as it arrived, and why it failed."""

    topic = serializers.CharField(source="topic.name")
    publisher = serializers.CharField(source="publisher_name", help_text="Empty when an external publisher sent it.")

    class Meta:
        model = DeadLetter
        fields = ["id", "topic", "status", "source", "publisher", "received_at", "raw"]

    def get_fields(self) -> dict[str, serializers.Field[Any, Any, Any, Any]]:
        """The declared fields and ``errors`` (the name is taken by ``Serializer.errors``)."""
        return {**super().get_fields(), "errors": ErrorSerializer(many=True, help_text="Why it was refused.")}


class DeadLetterPageSerializer(serializers.Serializer[Any]):
    """A page of open dead letters, newest first, and the cursor of the next (older) page."""

    dead_letters = DeadLetterSerializer(many=True)
    next = serializers.CharField(allow_null=True, help_text="Send as `cursor` for the next page; null at the end.")


class DeadLetterQuerySerializer(PageQuerySerializer):
    """Which open dead letters to list: one topic's, or every visible topic's."""

    topic = serializers.CharField(
        required=False, max_length=TOPIC_NAME_MAX_LENGTH, help_text="Only this topic's dead letters."
    )


class ReplayInSerializer(serializers.Serializer[Any]):
    """What to replay; each member left out is taken from the dead letter as it arrived."""

    type = serializers.CharField(required=False, max_length=200, help_text="The event type; default: the letter's.")
    payload = serializers.DictField(required=False, help_text="The fixed payload; default: the letter's.")


class ReplayedSerializer(PublishedSerializer):
    """The answer to a replay: the new event, and the dead letter it closed."""

    dead_letter = serializers.IntegerField(help_text="The dead letter, now replayed.")


# The registry: topics, event types, versions, the check of a draft, modes and states.

INTEGER_MAX = 2_147_483_647  # the largest value every database's positive integer column holds


class EventTypeInSerializer(serializers.Serializer[Any]):
    """A new event type, and optionally its first schema version."""

    name = serializers.CharField(max_length=200, help_text="Like 'tax_policy.updated'.")
    description = serializers.CharField(required=False, default="", allow_blank=True)
    schema = serializers.DictField(required=False, help_text="Its first JSON Schema (Draft 2020-12), if any.")


class TopicInSerializer(serializers.Serializer[Any]):
    """A new topic, and optionally its first event type (with its first schema version)."""

    name = serializers.CharField(max_length=TOPIC_NAME_MAX_LENGTH, help_text="Its Pub/Sub channel, fixed once made.")
    description = serializers.CharField(required=False, default="", allow_blank=True)
    sensitive = serializers.BooleanField(
        required=False, default=False, help_text="Every publish needs a second person's approval."
    )
    stream_retention = serializers.IntegerField(
        required=False,
        min_value=1,
        max_value=INTEGER_MAX,
        help_text="Events kept in the topic's Redis stream; default: the server's BUS_STREAM_MAXLEN.",
    )
    event_type = EventTypeInSerializer(required=False, help_text="Made with the topic, or nothing is made.")


class EventTypeRecordSerializer(serializers.ModelSerializer[EventType]):
    """An event type: what its next versions must keep, and the version publishers get (null before any)."""

    topic = serializers.CharField(source="topic.name")
    version_in_force = serializers.IntegerField(allow_null=True, help_text="Its newest version not disabled.")

    class Meta:
        model = EventType
        fields = [
            "topic",
            "name",
            "description",
            "compatibility_mode",
            "compatibility_policy",
            "version_in_force",
            "created_at",
        ]


class EventTypeListSerializer(serializers.Serializer[Any]):
    """A topic's event types, by name."""

    topic = serializers.CharField()
    event_types = EventTypeRecordSerializer(many=True)


class VersionProposalInSerializer(serializers.Serializer[Any]):
    """A new version, as the dashboard saves it: the schema, why, and whether a break is meant."""

    schema = serializers.DictField(help_text="A JSON Schema (Draft 2020-12) for the payload.")
    reason = serializers.CharField(max_length=REASON_MAX_CHARACTERS, help_text="Why, for the audit log.")
    declare_break = serializers.BooleanField(
        required=False,
        default=False,
        help_text="Save it even though it breaks the type's mode (compatibility 'none'); on a sensitive "
        "topic it then waits for a second bus admin's approval (202).",
    )


class VersionRequestSerializer(serializers.Serializer[Any]):
    """A breaking version on a sensitive topic, waiting for a second bus admin: nothing is saved yet."""

    request = serializers.IntegerField(help_text="The request's id.")
    status = serializers.CharField(help_text="awaiting_approval")
    topic = serializers.CharField()
    type = serializers.CharField()
    findings = serializers.ListField(child=serializers.CharField(), help_text="What it breaks.")
    reason = serializers.CharField()
    requested_at = serializers.DateTimeField()
    decide_at = serializers.CharField(help_text="The dashboard page where a second bus admin decides it.")


class DraftCheckInSerializer(serializers.Serializer[Any]):
    """A draft to check as the type's next version, and the version to diff it against."""

    schema = serializers.DictField(help_text="A JSON Schema (Draft 2020-12) for the payload.")
    against = serializers.IntegerField(
        required=False,
        min_value=1,
        max_value=INTEGER_MAX,
        help_text="The version to diff against; default: the one in force.",
    )


class FindingSerializer(serializers.Serializer[Any]):
    """One way the draft breaks the type's mode: where in the schema, the rule, what changed, whom it breaks."""

    pointer = serializers.CharField(allow_blank=True)
    rule = serializers.CharField()
    change = serializers.CharField()
    breaks = serializers.CharField(allow_blank=True)
    undecided = serializers.BooleanField(help_text="The checker could not decide (two patterns): counted as a break.")
    text = serializers.CharField(help_text="All of it on one line, as the refusals say it.")


class DiffRowSerializer(serializers.Serializer[Any]):
    """One keyword that differs from the version compared against: its JSON text before and after."""

    pointer = serializers.CharField()
    before = serializers.CharField(allow_null=True)
    after = serializers.CharField(allow_null=True)
    change = serializers.CharField(help_text="added, removed or changed")
    breaks = serializers.CharField(allow_blank=True, help_text="writers, readers, both, or empty: nobody.")


class RefusedExampleSerializer(serializers.Serializer[Any]):
    """An accepted event the draft would refuse, and its first error."""

    id = serializers.CharField(help_text="The event's envelope id.")
    error = serializers.CharField()


class DryRunSerializer(serializers.Serializer[Any]):
    """The draft tried on the type's newest open dead letters and accepted events (up to 1,000 of each)."""

    letters = serializers.IntegerField()
    letters_passing = serializers.IntegerField(help_text="Open dead letters the draft would accept.")
    events = serializers.IntegerField()
    events_refused = serializers.IntegerField(help_text="Accepted events the draft would refuse.")
    refused_examples = RefusedExampleSerializer(many=True)


class DraftCheckSerializer(serializers.Serializer[Any]):
    """The verdict on a draft; nothing is saved. An invalid draft has ``valid`` false and the reason in ``invalid``."""

    topic = serializers.CharField()
    type = serializers.CharField()
    number = serializers.IntegerField(help_text="The number it would be saved as.")
    valid = serializers.BooleanField(help_text="Valid Draft 2020-12 that the bus can use.")
    invalid = serializers.CharField(allow_blank=True, help_text="Why not: the pointer and the rule; empty if valid.")
    mode = serializers.ChoiceField(choices=CompatibilityMode.choices)
    policy = serializers.ChoiceField(choices=CompatibilityPolicy.choices)
    compatible = serializers.BooleanField(help_text="Valid, and the type's mode takes it as it is.")
    needs_declared_break = serializers.BooleanField(help_text="Valid, but saving it declares a breaking change.")
    needs_approval = serializers.BooleanField(help_text="A declared break here waits for a second bus admin.")
    findings = FindingSerializer(many=True)
    against = serializers.IntegerField(allow_null=True, help_text="The version the diff compares with.")
    diff = DiffRowSerializer(many=True)
    dry_run = DryRunSerializer(allow_null=True, help_text="Null for an invalid draft.")


class CompatibilityInSerializer(serializers.Serializer[Any]):
    """What the type's next versions must keep, and why it changes."""

    mode = serializers.ChoiceField(choices=CompatibilityMode.choices)
    policy = serializers.ChoiceField(
        choices=CompatibilityPolicy.choices, required=False, help_text="Default: the type's policy as it is."
    )
    reason = serializers.CharField(max_length=REASON_MAX_CHARACTERS, help_text="Why, for the audit log.")


class VersionStateInSerializer(serializers.Serializer[Any]):
    """A version's new state, and why."""

    state = serializers.ChoiceField(choices=SchemaVersionState.choices)
    reason = serializers.CharField(max_length=REASON_MAX_CHARACTERS, help_text="Why, for the audit log.")


# Receipts: what a subscriber did with an event. Their members are taken as sent and checked by the
# receipts action (busapp/actions/receipts.py), which names each rule once for the API and the receipts stream.

RECEIPTS_BATCH_MAX = 1000


class AsSentField(serializers.Field[Any, Any, Any, Any]):
    """A member taken as sent, whatever its JSON type, for the receipts action to check (null is refused here)."""

    def to_internal_value(self, data: Any) -> Any:
        """The value as it came."""
        return data

    def to_representation(self, value: Any) -> Any:
        """The value as it is."""
        return value


@extend_schema_field(serializers.ChoiceField(choices=ReceiptStatus.choices))
class ReceiptStatusField(AsSentField):
    """A receipt's status: applied, rejected or ignored."""


@extend_schema_field({"type": "string", "maxLength": RECEIPT_DETAIL_MAX_BYTES})
class ReceiptDetailField(AsSentField):
    """A receipt's words: text of at most 4 KiB in UTF-8, without NUL."""


@extend_schema_field({"type": "string", "minLength": 1, "maxLength": ENVELOPE_ID_MAX})
class EnvelopeIdField(AsSentField):
    """An event's envelope id."""


class ReceiptInSerializer(serializers.Serializer[Any]):
    """A subscriber's receipt for the event in the URL; the subscriber is the one the token is bound to."""

    status = ReceiptStatusField(help_text="applied, rejected (say why in detail) or ignored: not for this service.")
    detail = ReceiptDetailField(required=False, default="", help_text="At most 4 KiB of text (UTF-8), no NUL.")
    subscriber = serializers.CharField(
        required=False, max_length=64, help_text="If sent, it must be the subscriber the token is bound to."
    )


class ReceiptBatchItemInSerializer(ReceiptInSerializer):
    """One receipt of a batch: the event it is for, and what the subscriber did with it."""

    event = EnvelopeIdField(help_text="The event's envelope id.")


class ReceiptBatchInSerializer(serializers.Serializer[Any]):
    """Up to 1,000 receipts of the token's subscriber, recorded all together or not at all."""

    receipts = serializers.ListField(
        child=ReceiptBatchItemInSerializer(),
        min_length=1,
        max_length=RECEIPTS_BATCH_MAX,
        error_messages={
            "min_length": "send at least one receipt",
            "max_length": f"a batch holds at most {RECEIPTS_BATCH_MAX} receipts: split it",
        },
    )


class ReceiptSerializer(serializers.ModelSerializer[Receipt]):
    """A subscriber's receipt for an event, as recorded (a receipt is final)."""

    event = serializers.CharField(source="event.envelope_id", help_text="The event's envelope id.")
    subscriber = serializers.CharField(source="subscriber.name")
    status = serializers.ChoiceField(choices=ReceiptStatus.choices)
    via = serializers.ChoiceField(choices=ReceiptVia.choices, help_text="api, or the receipts stream.")
    latency_seconds = serializers.SerializerMethodField()

    class Meta:
        model = Receipt
        fields = ["event", "subscriber", "status", "detail", "received_at", "via", "latency_seconds"]

    @extend_schema_field(serializers.FloatField(allow_null=True))
    def get_latency_seconds(self, receipt: Receipt) -> float | None:
        """Seconds from the event's publish to the receipt; null while the event was never published."""
        seconds = receipt.seconds_after(receipt.event.published_at)
        return None if seconds is None else round(seconds, 3)


class ReceiptOutcomeSerializer(serializers.Serializer[Any]):
    """One receipt of a batch: recorded now (created), or the same one recorded before."""

    created = serializers.BooleanField(help_text="False: the same receipt was recorded before; this is it.")
    receipt = ReceiptSerializer()


class ReceiptBatchResultSerializer(serializers.Serializer[Any]):
    """The answer to a batch: one result per receipt, in order, and how many were new."""

    results = ReceiptOutcomeSerializer(many=True)
    created = serializers.IntegerField(help_text="Receipts recorded by this request.")
    repeated = serializers.IntegerField(help_text="Receipts that were recorded already, the same.")


class EventReceiptListSerializer(serializers.Serializer[Any]):
    """An event's receipts, one per subscriber, by subscriber name."""

    event = serializers.CharField(help_text="The event's envelope id.")
    receipts = ReceiptSerializer(many=True)
