"""Topics, event types, schema versions, events, dead letters and the audit log."""

from __future__ import annotations

import datetime as dt
import json
import math
import re
from typing import Any

from django.conf import settings
from django.core.exceptions import ValidationError
from django.core.validators import MaxValueValidator, MinValueValidator, RegexValidator
from django.db import models
from django.db.models import Q
from django.urls import reverse
from django.utils import timezone
from guardian.models import GroupObjectPermissionBase, UserObjectPermissionBase

TOPIC_NAME_RE = re.compile(r"^[a-z][a-z0-9._-]*$")
EVENT_TYPE_NAME_RE = re.compile(r"^[a-z][a-z0-9_]*(\.[a-z0-9_]+)*$")
# Channels group names must stay under 100 characters and the topic's group is "topic.<name>".
TOPIC_NAME_MAX_LENGTH = 80
DLQ_SUFFIX = ".dlq"
# The seed's naming tip (agency.domain.event), shown wherever a topic is named.
TOPIC_NAME_EXAMPLE = "irs.tax_policy.updated"
# /topics/new/ is the page that creates topics: a topic of that name could never be opened.
TOPIC_NAMES_RESERVED = frozenset({"new"})
# A stream shorter than this loses events a consumer that restarts has not read yet; a longer
# one (events up to 64 KiB each) fills Redis's memory before anyone reads that far back.
STREAM_RETENTION_MIN = 100
STREAM_RETENTION_MAX = 10_000_000


def _is_new(obj: models.Model) -> bool:
    """Whether an instance is unsaved, as ``busapp.store`` reads Django's private state.

    Imported when called: the store's package imports these models.
    """
    from busapp.store.instances import instance_is_new

    return instance_is_new(obj)


class ImmutableRecordError(Exception):
    """Raised when code tries to change or remove a record that must never change."""


def validate_topic_name(name: str) -> None:
    """Refuse a topic name that breaks the naming rule, saying which part."""
    example = (
        "use lowercase letters, digits, '.', '-' and '_', starting with a letter, "
        f"as agency.domain.event, like '{TOPIC_NAME_EXAMPLE}'"
    )
    if len(name) > TOPIC_NAME_MAX_LENGTH:
        raise ValidationError(f"topic name is {len(name)} characters; the limit is {TOPIC_NAME_MAX_LENGTH}")
    if not TOPIC_NAME_RE.match(name):
        raise ValidationError(f"topic name {name!r} breaks the naming rule: {example}")
    if name.endswith(DLQ_SUFFIX):
        raise ValidationError(f"topic name {name!r} ends with '{DLQ_SUFFIX}', which is reserved for dead letters")
    if ".." in name or name.endswith((".", "-", "_")):
        raise ValidationError(f"topic name {name!r} has an empty part or a trailing separator: {example}")
    if name in TOPIC_NAMES_RESERVED:
        raise ValidationError(f"topic name {name!r} is reserved: /topics/{name}/ is the page that creates topics")


def validate_stream_retention(count: int) -> None:
    """Refuse a stream retention outside the bounds a topic's Redis stream can sensibly keep."""
    if not STREAM_RETENTION_MIN <= count <= STREAM_RETENTION_MAX:
        raise ValidationError(
            f"{count:,} events is out of bounds: a topic's stream keeps between {STREAM_RETENTION_MIN:,} and "
            f"{STREAM_RETENTION_MAX:,} events (fewer loses events a restarting consumer has not read yet; more fills "
            "Redis's memory)"
        )


def validate_event_type_name(name: str) -> None:
    """Refuse an event type name that is not dotted lowercase words like 'tax_policy.updated'."""
    if len(name) > 200 or not EVENT_TYPE_NAME_RE.match(name):
        raise ValidationError(
            f"event type {name!r} breaks the naming rule: dotted lowercase words of letters, digits "
            "and '_', like 'tax_policy.updated'"
        )


class Source(models.TextChoices):
    """Where an event or dead letter came from."""

    FORM = "form", "web form"
    API = "api", "JSON API"
    CLI = "cli", "command line"
    EXTERNAL = "external", "external publisher"
    REPLAY = "replay", "dead-letter replay"


class Topic(models.Model):
    """A channel on the bus; its name is the Redis Pub/Sub channel subscribers listen on."""

    name = models.CharField(max_length=TOPIC_NAME_MAX_LENGTH, unique=True, validators=[validate_topic_name])
    description = models.TextField(blank=True)
    sensitive = models.BooleanField(default=False, help_text="Publishing needs a second person's approval (four-eyes).")
    stream_retention = models.PositiveIntegerField(
        default=100_000,
        validators=[validate_stream_retention],
        help_text="Events kept in the topic's Redis stream (XADD MAXLEN ~ N).",
    )
    # Who answers for the topic; it grants no right (rights are granted at /access/). PROTECT: a
    # group that owns topics is not deleted until they are given another owner, each change audited.
    owner = models.ForeignKey(
        "auth.Group",
        null=True,
        blank=True,
        on_delete=models.PROTECT,
        related_name="owned_topics",
        help_text="The group that answers for the topic (informational: it grants no right).",
    )
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["name"]
        permissions = [
            ("publish_topic", "Can publish events to the topic"),
            ("approve_topic", "Can approve publishes to the sensitive topic"),
            ("manage_topic", "Can manage the topic's schemas and dead letters"),
            ("export_topic", "Can export the topic's history"),
        ]

    def __str__(self) -> str:
        return self.name

    def save(self, *args: Any, **kwargs: Any) -> None:
        """Save; an existing topic's ``sensitive`` flag is refused here: it changes only with a second bus admin.

        ``busapp.actions.sensitivity`` changes it once approved; every other path (an admin form, a
        script, a command) meets this refusal instead of turning the four-eyes rule off alone.
        """
        fields = kwargs.get("update_fields")
        if not _is_new(self) and (fields is None or "sensitive" in fields):
            stored = Topic.objects.filter(pk=self.pk).values_list("sensitive", flat=True).first()
            if stored is not None and stored != self.sensitive:
                raise ImmutableRecordError(
                    f"topic {self.name!r}: 'sensitive' changes only through a request a second bus admin "
                    f"approves, at /topics/{self.name}/sensitivity/"
                )
        super().save(*args, **kwargs)

    @property
    def channel(self) -> str:
        """The Redis Pub/Sub channel: the topic's name, as in the seed."""
        return self.name

    @property
    def dlq_channel(self) -> str:
        """The channel dead letters of this topic go to."""
        return f"{self.name}{DLQ_SUFFIX}"


class CompatibilityMode(models.TextChoices):
    """What a new version of an event type must keep of the earlier ones (Confluent's compatibility types)."""

    NONE = "NONE", "NONE: any change"
    BACKWARD = "BACKWARD", "BACKWARD: events valid under the last version stay valid"
    BACKWARD_TRANSITIVE = "BACKWARD_TRANSITIVE", "BACKWARD_TRANSITIVE: events valid under any earlier one stay valid"
    FORWARD = "FORWARD", "FORWARD: subscribers on the last version accept the new events"
    FORWARD_TRANSITIVE = "FORWARD_TRANSITIVE", "FORWARD_TRANSITIVE: subscribers on any earlier version accept them"
    FULL = "FULL", "FULL: both, against the last version"
    FULL_TRANSITIVE = "FULL_TRANSITIVE", "FULL_TRANSITIVE: both, against every earlier version"
    DISABLED = "DISABLED", "DISABLED: no new versions"


class CompatibilityPolicy(models.TextChoices):
    """How an optional property added to an open object counts: a break (STRICT, sound) or not (LENIENT)."""

    STRICT = "STRICT", "STRICT: every value that could tell the versions apart counts"
    LENIENT = "LENIENT", "LENIENT: an optional property may be added to an open object"


class EventType(models.Model):
    """A kind of event on a topic, such as ``tax_policy.updated``; its shape is in schema versions."""

    topic = models.ForeignKey(Topic, on_delete=models.PROTECT, related_name="event_types")
    name = models.CharField(max_length=200, validators=[validate_event_type_name])
    description = models.TextField(blank=True)
    compatibility_mode = models.CharField(
        max_length=24, choices=CompatibilityMode.choices, default=CompatibilityMode.BACKWARD
    )
    compatibility_policy = models.CharField(
        max_length=8, choices=CompatibilityPolicy.choices, default=CompatibilityPolicy.STRICT
    )
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["topic__name", "name"]
        constraints = [models.UniqueConstraint(fields=["topic", "name"], name="unique_event_type_per_topic")]

    def __str__(self) -> str:
        return f"{self.topic.name}/{self.name}"


class Compatibility(models.TextChoices):
    """Whether a new schema version was checked against its event type's mode, or created as a declared break."""

    NONE = "none", "none: any change allowed"
    BACKWARD = "backward", "backward: events valid before stay valid"


class SchemaVersionState(models.TextChoices):
    """Whether publishers may use a version: freely, with a warning, or not at all. Versions are never deleted."""

    ENABLED = "enabled", "enabled"
    DEPRECATED = "deprecated", "deprecated: accepted with a warning"
    DISABLED = "disabled", "disabled: refused"


class SchemaVersionQuerySet(models.QuerySet["SchemaVersion"]):
    """Queries over schema versions."""

    def active(self) -> SchemaVersionQuerySet:
        """Versions that may be published against (enabled or deprecated), newest first."""
        return self.exclude(state=SchemaVersionState.DISABLED).order_by("-version")


class SchemaVersion(models.Model):
    """One immutable JSON Schema (Draft 2020-12) for an event type's payload."""

    event_type = models.ForeignKey(EventType, on_delete=models.PROTECT, related_name="schema_versions")
    version = models.PositiveIntegerField()
    schema = models.JSONField()
    # PostgreSQL's jsonb keeps an object's keys in its own order (shortest first), so the
    # schema's text is kept too: forms list fields in the order their author wrote them.
    source = models.TextField(blank=True, help_text="The schema's JSON as its author wrote it (key order kept).")
    fingerprint = models.CharField(max_length=64, help_text="sha256 of the schema's canonical JSON.")
    compatibility = models.CharField(max_length=16, choices=Compatibility.choices, default=Compatibility.BACKWARD)
    state = models.CharField(max_length=16, choices=SchemaVersionState.choices, default=SchemaVersionState.ENABLED)
    state_changed_at = models.DateTimeField(null=True, blank=True, help_text="When the state last changed.")
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    created_at = models.DateTimeField(auto_now_add=True)

    objects = SchemaVersionQuerySet.as_manager()

    class Meta:
        ordering = ["event_type", "-version"]
        constraints = [
            models.UniqueConstraint(fields=["event_type", "version"], name="unique_schema_version"),
        ]

    def __str__(self) -> str:
        return f"{self.event_type} v{self.version}"

    def save(self, *args: Any, **kwargs: Any) -> None:
        """Save a new version; afterwards only its state may change."""
        fields = set(kwargs.get("update_fields") or ())
        if not _is_new(self) and not (fields and fields <= {"state", "state_changed_at"}):
            raise ImmutableRecordError("a saved schema version is immutable: create a new version instead")
        super().save(*args, **kwargs)

    @property
    def authored(self) -> Any:
        """The schema with its keys in the order its author wrote them."""
        return json.loads(self.source) if self.source else self.schema


class EventStatus(models.TextChoices):
    """Where an accepted event is on its way to the bus."""

    PENDING = "pending", "pending: accepted, not yet on the bus"
    PUBLISHED = "published", "published"


class Event(models.Model):
    """One event in the history; while ``pending`` it is also the outbox row the relay sends."""

    envelope_id = models.CharField(max_length=128, unique=True)
    # Foreign keys without their own index: every index costs each publish a write, these
    # rows are never deleted, and (topic, timestamp, id) already leads with the topic.
    # The topic and event type are the schema version's, copied for the indexes: the database
    # checks the version's key alone, as each check cost a batch of 1,000 rows 3 ms at commit.
    topic = models.ForeignKey(
        Topic, on_delete=models.PROTECT, related_name="events", db_index=False, db_constraint=False
    )
    event_type = models.ForeignKey(
        EventType, on_delete=models.PROTECT, related_name="events", db_index=False, db_constraint=False
    )
    schema_version = models.ForeignKey(SchemaVersion, on_delete=models.PROTECT, related_name="events", db_index=False)
    payload = models.JSONField()
    envelope = models.TextField(help_text="The exact JSON that goes (or went) on the bus.")
    timestamp = models.DateTimeField(help_text="The envelope's timestamp.")
    source = models.CharField(max_length=16, choices=Source.choices)
    publisher = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.PROTECT, related_name="+", db_index=False
    )
    publisher_name = models.CharField(max_length=150, help_text="Who published it, as they were named then.")
    status = models.CharField(max_length=16, choices=EventStatus.choices, default=EventStatus.PENDING)
    stream_id = models.CharField(max_length=32, blank=True, help_text="Redis stream entry id once published.")
    created_at = models.DateTimeField(auto_now_add=True, help_text="When it was accepted (queued).")
    published_at = models.DateTimeField(null=True, blank=True)
    attempts = models.PositiveIntegerField(default=0)
    next_attempt_at = models.DateTimeField(null=True, blank=True)
    last_error = models.TextField(blank=True)
    # Kept, not derived from the topic: the flag may change later, and the mark says what was
    # true when the event went out. The dashboard's own publishes on a sensitive topic pass
    # four-eyes first; only the tap records events nobody approved.
    maybe_sent_twice = models.BooleanField(
        default=False,
        help_text=(
            "Resent after Redis lost what became of its first send (it may have run just before Redis lost its "
            "data): subscribers may have heard it twice."
        ),
    )
    not_approved = models.BooleanField(
        default=False,
        help_text="Put on the bus by an external publisher while its topic was sensitive: nobody approved it.",
    )

    class Meta:
        ordering = ["-timestamp", "-id"]
        indexes = [
            models.Index(fields=["topic", "timestamp", "id"], name="event_topic_time"),
            # The value in force of a type (the drift check's, every second): its newest event, however
            # busy the rest of its topic.
            models.Index(fields=["event_type", "timestamp", "id"], name="event_type_time"),
            models.Index(fields=["timestamp", "id"], name="event_time"),
            models.Index(fields=["next_attempt_at"], condition=Q(status="pending"), name="event_pending_outbox"),
            # Few rows: /metrics counts them per topic on every scrape without reading the history.
            models.Index(fields=["topic"], condition=Q(not_approved=True), name="event_not_approved"),
            models.Index(fields=["topic"], condition=Q(maybe_sent_twice=True), name="event_maybe_sent_twice"),
        ]

    def __str__(self) -> str:
        return f"{self.event_type.name} {self.envelope_id}"

    def get_absolute_url(self) -> str:
        """The event's full record."""
        return reverse("event-detail", args=[self.envelope_id])


SUBSCRIBER_NAME_PATTERN = r"[a-z][a-z0-9-]{1,62}[a-z0-9]"
SUBSCRIBER_NAME = RegexValidator(
    rf"^{SUBSCRIBER_NAME_PATTERN}$",
    "3 to 64 lowercase letters, digits and hyphens, starting with a letter (it names its Redis consumer group)",
)
APPLY_DEADLINE_DEFAULT = 60  # seconds a subscriber has to apply an event before it counts as overdue


class Subscriber(models.Model):
    """A service expected to apply the events of the topics it follows, such as e-file or the withholding calculator."""

    name = models.CharField(max_length=64, unique=True, validators=[SUBSCRIBER_NAME])
    description = models.TextField(blank=True)
    owner = models.ForeignKey(
        "auth.Group", null=True, blank=True, on_delete=models.PROTECT, related_name="+", help_text="The team."
    )
    contact = models.CharField(max_length=200, blank=True, help_text="Who to call when it drifts.")
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["name"]

    def __str__(self) -> str:
        return self.name


class SubscriberFollow(models.Model):
    """A topic a subscriber follows (some of its event types, or all), and how long it has to apply each event."""

    subscriber = models.ForeignKey(Subscriber, on_delete=models.CASCADE, related_name="follows")
    topic = models.ForeignKey(Topic, on_delete=models.PROTECT, related_name="followers")
    event_types = models.ManyToManyField(EventType, blank=True, related_name="+", help_text="None: every type.")
    apply_deadline = models.PositiveIntegerField(
        default=APPLY_DEADLINE_DEFAULT,
        validators=[MinValueValidator(1), MaxValueValidator(7 * 24 * 3600)],
        help_text="Seconds from publish to the subscriber's receipt before it counts as overdue.",
    )
    since = models.DateTimeField(
        default=timezone.now, help_text="When it began to follow: its deadlines count from here at the earliest."
    )

    class Meta:
        ordering = ["subscriber__name", "topic__name"]
        constraints = [models.UniqueConstraint(fields=["subscriber", "topic"], name="one_follow_per_topic")]

    def __str__(self) -> str:
        return f"{self.subscriber} follows {self.topic.name}"


class ReceiptStatus(models.TextChoices):
    """What a subscriber did with an event."""

    APPLIED = "applied", "applied"
    REJECTED = "rejected", "rejected"
    IGNORED = "ignored", "ignored: not for this service"


class ReceiptVia(models.TextChoices):
    """How a receipt reached the bus."""

    API = "api", "JSON API"
    STREAM = "stream", "receipts stream"


RECEIPT_DETAIL_MAX_BYTES = 4096


class Receipt(models.Model):
    """A subscriber's word on one event: applied, rejected (with why) or ignored; one per event and subscriber."""

    # No database constraints: a per-row check on every insert of the receipts stream's bulk, for rows
    # nothing deletes (events and subscribers are kept for ever); the action checks both exist. One
    # index, the unique (event, subscriber): every read looks receipts up by their events.
    event = models.ForeignKey(
        Event, on_delete=models.PROTECT, related_name="receipts", db_index=False, db_constraint=False
    )
    subscriber = models.ForeignKey(
        Subscriber, on_delete=models.PROTECT, related_name="receipts", db_index=False, db_constraint=False
    )
    status = models.CharField(max_length=16, choices=ReceiptStatus.choices)
    detail = models.TextField(blank=True, help_text="The subscriber's words, at most 4 KiB (why it rejected).")
    received_at = models.DateTimeField(help_text="When the bus received it (a stream entry's own time).")
    via = models.CharField(max_length=16, choices=ReceiptVia.choices)

    class Meta:
        ordering = ["event_id", "subscriber_id"]
        constraints = [models.UniqueConstraint(fields=["event", "subscriber"], name="one_receipt_per_subscriber")]
        indexes = [
            # Few rows (rejections are rare): the dashboard counts them on every load without reading the rest.
            models.Index(fields=["received_at"], condition=Q(status="rejected"), name="receipt_rejected_time"),
        ]

    def __str__(self) -> str:
        return f"{self.subscriber_id} {self.status} event #{self.event_id}"

    def seconds_after(self, published_at: dt.datetime | None) -> float | None:
        """Seconds from its event's publish (given, so callers holding the event need no query) to this receipt."""
        return (self.received_at - published_at).total_seconds() if published_at else None


class DriftReason(models.TextChoices):
    """Why a subscriber is behind on an event type."""

    OVERDUE = "overdue", "no receipt by its deadline"
    REJECTED = "rejected", "rejected the value in force"


class Drift(models.Model):
    """A stretch of time a subscriber was not on an event type's value in force: opened, then cleared.

    The bus worker opens it when the deadline passes without an applied receipt (or on a
    rejection) and clears it when the subscriber applies the value then in force; each
    change has its audit entry (``subscriber.overdue``, ``subscriber.caught_up``).
    """

    subscriber = models.ForeignKey(Subscriber, on_delete=models.PROTECT, related_name="drifts")
    topic = models.ForeignKey(Topic, on_delete=models.PROTECT, related_name="+")
    event_type = models.ForeignKey(EventType, on_delete=models.PROTECT, related_name="+")
    event = models.ForeignKey(
        Event, on_delete=models.PROTECT, related_name="+", help_text="The value in force it has not applied (newest)."
    )
    reason = models.CharField(max_length=16, choices=DriftReason.choices)
    since = models.DateTimeField(help_text="When its deadline passed, or it rejected.")
    cleared_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-since"]
        constraints = [
            models.UniqueConstraint(
                fields=["subscriber", "event_type"], condition=models.Q(cleared_at__isnull=True), name="one_open_drift"
            )
        ]

    def __str__(self) -> str:
        return f"{self.subscriber_id} behind on {self.event_type_id} since {self.since}"


class VersionEventCount(models.Model):
    """How many events a schema version accepted, through ``EventCountMark``'s event id (the worker adds to it)."""

    schema_version = models.OneToOneField(
        SchemaVersion, primary_key=True, on_delete=models.CASCADE, related_name="event_count"
    )
    events = models.PositiveBigIntegerField(default=0)

    def __str__(self) -> str:
        return f"{self.schema_version}: {self.events} events"


class EventCountMark(models.Model):
    """One row: the newest event id ``VersionEventCount`` has counted; newer events are counted when read."""

    through_event_id = models.BigIntegerField(default=0)
    counted_at = models.DateTimeField(null=True, blank=True)

    def __str__(self) -> str:
        return f"events counted through #{self.through_event_id}"


class ChangeRequestStatus(models.TextChoices):
    """Where a bus admin's four-eyes request (a topic's ``sensitive`` flag, a breaking schema version) is."""

    AWAITING_APPROVAL = "awaiting_approval", "awaiting a second bus admin"
    APPROVED = "approved", "approved"
    REJECTED = "rejected", "rejected"
    CANCELLED = "cancelled", "cancelled"


class TopicSensitivityChange(models.Model):
    """A bus admin's request to make a topic sensitive or not; the flag changes only when a second one approves."""

    topic = models.ForeignKey(Topic, on_delete=models.PROTECT, related_name="sensitivity_changes")
    sensitive = models.BooleanField(help_text="The value asked for.")
    reason = models.TextField(help_text="Why, in the requester's words (kept in the audit log).")
    requested_by = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="+")
    requested_at = models.DateTimeField(default=timezone.now)
    status = models.CharField(
        max_length=24, choices=ChangeRequestStatus.choices, default=ChangeRequestStatus.AWAITING_APPROVAL
    )
    decided_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.PROTECT, related_name="+"
    )
    decided_at = models.DateTimeField(null=True, blank=True)
    decision_reason = models.TextField(blank=True)

    class Meta:
        ordering = ["-requested_at", "-id"]
        constraints = [
            models.UniqueConstraint(
                fields=["topic"],
                condition=Q(status="awaiting_approval"),
                name="one_open_sensitivity_change_per_topic",
            )
        ]

    def __str__(self) -> str:
        state = "sensitive" if self.sensitive else "not sensitive"
        return f"sensitivity change #{self.pk}: {self.topic.name} {state}"

    def get_absolute_url(self) -> str:
        """The topic's sensitivity page, where the change is decided."""
        return reverse("topic-sensitivity", args=[self.topic.name])

    @property
    def is_open(self) -> bool:
        """True while a second bus admin can still decide it."""
        return self.status == ChangeRequestStatus.AWAITING_APPROVAL


class SchemaVersionRequest(models.Model):
    """A breaking schema version proposed on a sensitive topic; it is saved only when a second bus admin approves."""

    event_type = models.ForeignKey(EventType, on_delete=models.PROTECT, related_name="version_requests")
    schema = models.JSONField()
    source = models.TextField(help_text="The schema's JSON as its author wrote it (key order kept).")
    fingerprint = models.CharField(max_length=64)
    findings = models.JSONField(help_text="What it breaks, as the check said when it was proposed.")
    reason = models.TextField(help_text="Why, in the requester's words (kept in the audit log).")
    requested_by = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="+")
    requested_at = models.DateTimeField(default=timezone.now)
    status = models.CharField(
        max_length=24, choices=ChangeRequestStatus.choices, default=ChangeRequestStatus.AWAITING_APPROVAL
    )
    decided_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.PROTECT, related_name="+"
    )
    decided_at = models.DateTimeField(null=True, blank=True)
    decision_reason = models.TextField(blank=True)
    version = models.ForeignKey(
        SchemaVersion, null=True, blank=True, on_delete=models.PROTECT, related_name="+", help_text="Once approved."
    )

    class Meta:
        ordering = ["-requested_at", "-id"]
        constraints = [
            models.UniqueConstraint(
                fields=["event_type"],
                condition=Q(status="awaiting_approval"),
                name="one_open_version_request_per_type",
            )
        ]

    def __str__(self) -> str:
        return f"version request #{self.pk}: {self.event_type}"

    @property
    def is_open(self) -> bool:
        """Nobody has decided or cancelled it yet."""
        return self.status == ChangeRequestStatus.AWAITING_APPROVAL

    @property
    def authored(self) -> Any:
        """The schema with its keys in the order its author wrote them."""
        return json.loads(self.source)


class PublishRequestStatus(models.TextChoices):
    """Where a publish that waits is: for a second person, for its time, or done."""

    AWAITING_APPROVAL = "awaiting_approval", "awaiting approval"
    SCHEDULED = "scheduled", "scheduled"
    PUBLISHED = "published", "published"
    REJECTED = "rejected", "rejected"
    CANCELLED = "cancelled", "cancelled"
    FAILED = "failed", "failed"

    @classmethod
    def open(cls) -> tuple[str, ...]:
        """The statuses from which a request can still be published, or cancelled."""
        return (cls.AWAITING_APPROVAL.value, cls.SCHEDULED.value)


class PublishRequest(models.Model):
    """A publish that waits: for a second person's approval (sensitive topics), for its time (scheduled), or both.

    The envelope id is chosen when the request is made and is the id the event carries
    when it goes out, so the request and its event are one story in history.
    """

    envelope_id = models.CharField(max_length=128, unique=True)
    topic = models.ForeignKey(Topic, on_delete=models.PROTECT, related_name="publish_requests")
    event_type = models.ForeignKey(EventType, on_delete=models.PROTECT, related_name="+")
    payload = models.JSONField()
    requested_by = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="+")
    requested_at = models.DateTimeField(auto_now_add=True)
    needs_approval = models.BooleanField(help_text="The topic was sensitive when this was requested.")
    effective_at = models.DateTimeField(null=True, blank=True, help_text="When it goes out; empty: once approved.")
    status = models.CharField(max_length=24, choices=PublishRequestStatus.choices)
    decided_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.PROTECT, related_name="+"
    )
    decided_at = models.DateTimeField(null=True, blank=True)
    decision_reason = models.TextField(blank=True)
    event = models.ForeignKey(Event, null=True, blank=True, on_delete=models.PROTECT, related_name="+")
    failure = models.TextField(blank=True, help_text="Why it could not go out at its time.")

    class Meta:
        ordering = ["-requested_at", "-id"]
        indexes = [
            models.Index(fields=["status", "effective_at"], name="publishrequest_due"),
            models.Index(fields=["topic", "status"], name="publishrequest_topic_status"),
        ]

    def __str__(self) -> str:
        return f"publish request #{self.pk} on {self.topic.name}"

    def get_absolute_url(self) -> str:
        """The request's page, where it is approved, rejected or cancelled."""
        return reverse("publish-request", args=[self.topic.name, self.pk])

    @property
    def is_open(self) -> bool:
        """True while it can still go out or be cancelled."""
        return self.status in PublishRequestStatus.open()


class DeadLetterStatus(models.TextChoices):
    """What became of a dead letter."""

    OPEN = "open", "open"
    REPLAYED = "replayed", "replayed"
    DISCARDED = "discarded", "discarded"


# The longest cause path or message kept for grouping (the letter's errors keep them whole).
CAUSE_LENGTH = 300


class DeadLetter(models.Model):
    """Something that arrived for a topic and failed validation, kept as it arrived."""

    topic = models.ForeignKey(Topic, on_delete=models.PROTECT, related_name="dead_letters", db_index=False)
    raw = models.TextField(help_text="The body as it arrived (text; may not be JSON).")
    errors = models.JSONField(help_text='[{"path": "/payload/x", "message": "..."}]')
    # Its cause, what the dead-letter workbench groups by: the type it named and its first error.
    event_type_name = models.CharField(max_length=150, blank=True, help_text="The type its body named, if any.")
    cause_path = models.CharField(
        max_length=CAUSE_LENGTH, blank=True, help_text="The first error's JSON pointer, array positions as *."
    )
    cause_message = models.CharField(max_length=CAUSE_LENGTH, blank=True, help_text="The first error's rule.")
    source = models.CharField(max_length=16, choices=Source.choices)
    publisher = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.PROTECT, related_name="+"
    )
    publisher_name = models.CharField(max_length=150, blank=True)
    origin = models.CharField(
        max_length=200,
        null=True,
        blank=True,
        unique=True,
        help_text="The Redis stream entry it was read from, so the tap records it once.",
    )
    received_at = models.DateTimeField(default=timezone.now)
    status = models.CharField(max_length=16, choices=DeadLetterStatus.choices, default=DeadLetterStatus.OPEN)
    dlq_message = models.TextField(help_text="The JSON sent to '<topic>.dlq'.")
    dlq_stream_id = models.CharField(max_length=32, blank=True, help_text="Empty until sent to '<topic>.dlq'.")
    replayed_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.PROTECT, related_name="+"
    )
    replayed_at = models.DateTimeField(null=True, blank=True)
    replay_event = models.ForeignKey(
        Event, null=True, blank=True, on_delete=models.PROTECT, related_name="replayed_from"
    )
    discarded_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.PROTECT, related_name="+"
    )
    discarded_at = models.DateTimeField(null=True, blank=True)
    discard_reason = models.TextField(blank=True)

    class Meta:
        ordering = ["-received_at", "-id"]
        indexes = [
            models.Index(fields=["topic", "status", "received_at"], name="deadletter_topic_status"),
            models.Index(fields=["id"], condition=Q(dlq_stream_id=""), name="deadletter_unsent"),
            models.Index(
                fields=["topic", "event_type_name", "cause_path", "cause_message", "received_at"],
                condition=Q(status="open"),
                name="deadletter_open_cause",
            ),
        ]

    def __str__(self) -> str:
        return f"dead letter #{self.pk} on {self.topic.name}"

    def get_absolute_url(self) -> str:
        """The dead letter's page on the workbench."""
        return reverse("dead-letter", args=[self.pk])


class BulkActionKind(models.TextChoices):
    """What a bulk action does to each dead letter."""

    REPLAY = "replay", "replay"
    DISCARD = "discard", "discard"


class BulkActionStatus(models.TextChoices):
    """Where a bulk action is."""

    RUNNING = "running", "running"
    CANCELLED = "cancelled", "cancelled"
    DONE = "done", "done"


class BulkAction(models.Model):
    """A replay or discard over many dead letters of a topic, run by the bus worker at a capped rate.

    The selection is fixed when it starts; the report says, letter by letter, what was done and why not.
    """

    topic = models.ForeignKey(Topic, on_delete=models.PROTECT, related_name="+")
    kind = models.CharField(max_length=16, choices=BulkActionKind.choices)
    letter_ids = models.JSONField(help_text="The dead letters selected, in the order they are handled.")
    reason = models.TextField(blank=True, help_text="Why (required to discard).")
    rate_per_second = models.PositiveIntegerField()
    requested_by = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="+")
    requested_at = models.DateTimeField(auto_now_add=True)
    status = models.CharField(max_length=16, choices=BulkActionStatus.choices, default=BulkActionStatus.RUNNING)
    handled = models.PositiveIntegerField(default=0)
    succeeded = models.PositiveIntegerField(default=0)
    skipped = models.PositiveIntegerField(default=0)
    report = models.JSONField(default=list, help_text='[{"letter": id, "outcome": ..., "detail": ...}]')
    finished_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-requested_at", "-id"]
        indexes = [models.Index(fields=["status"], name="bulkaction_status")]

    def __str__(self) -> str:
        return f"bulk {self.kind} #{self.pk} on {self.topic.name}"

    def get_absolute_url(self) -> str:
        """The action's progress and report."""
        return reverse("bulk-action", args=[self.pk])

    @property
    def total(self) -> int:
        """How many dead letters were selected."""
        return len(self.letter_ids)

    @property
    def seconds_left(self) -> int:
        """About how long the letters still to handle take at the action's rate; 0 once it stopped."""
        if self.status != BulkActionStatus.RUNNING:
            return 0
        return math.ceil(max(0, self.total - self.handled) / max(1, self.rate_per_second))

    def progress(self) -> dict[str, Any]:
        """What the progress bar shows."""
        return {
            "id": self.pk,
            "status": self.status,
            "total": self.total,
            "handled": self.handled,
            "succeeded": self.succeeded,
            "skipped": self.skipped,
            "seconds_left": self.seconds_left,
        }


class AuditAction(models.TextChoices):
    """Every action the audit log records, by one name each: every writer uses it, and so does the audit page's filter.

    The names are the ones entries have always carried (``eventtype.update`` included), so old
    entries and their hashes stay as they are.
    """

    EVENT_PUBLISH = "event.publish", "event published"
    EVENT_PUBLISH_BATCH = "event.publish_batch", "batch of events published"
    EVENT_RECORD = "event.record", "event from an external publisher recorded"
    EVENT_RECORD_BATCH = "event.record_batch", "batch of events from external publishers recorded"
    EVENT_RELAY = "event.relay", "held-back event relayed"
    PUBLISH_REFUSED = "publish.refused", "publish refused"
    APPROVAL_REFUSED = "approval.refused", "approval refused"
    MANAGE_REFUSED = "manage.refused", "management refused"
    WRITE_REFUSED = "write.refused", "write refused"
    PUBLISH_REQUEST_CREATE = "publish_request.create", "publish requested"
    PUBLISH_REQUEST_APPROVE = "publish_request.approve", "publish request approved"
    PUBLISH_REQUEST_REJECT = "publish_request.reject", "publish request rejected"
    PUBLISH_REQUEST_CANCEL = "publish_request.cancel", "publish request cancelled"
    PUBLISH_REQUEST_CANCEL_REFUSED = "publish_request.cancel.refused", "publish request cancel refused"
    PUBLISH_REQUEST_FAIL = "publish_request.fail", "approved publish failed"
    DEAD_LETTER_CREATE = "dead_letter.create", "dead letter created"
    DEAD_LETTER_REPLAY = "dead_letter.replay", "dead letter replayed"
    DEAD_LETTER_REPLAY_REFUSED = "dead_letter.replay.refused", "dead letter replay refused"
    DEAD_LETTER_DISCARD = "dead_letter.discard", "dead letter discarded"
    DEAD_LETTER_BULK_REPLAY_START = "dead_letter.bulk_replay.start", "bulk replay started"
    DEAD_LETTER_BULK_REPLAY_CANCEL = "dead_letter.bulk_replay.cancel", "bulk replay cancelled"
    DEAD_LETTER_BULK_REPLAY_DONE = "dead_letter.bulk_replay.done", "bulk replay finished"
    DEAD_LETTER_BULK_DISCARD_START = "dead_letter.bulk_discard.start", "bulk discard started"
    DEAD_LETTER_BULK_DISCARD_CANCEL = "dead_letter.bulk_discard.cancel", "bulk discard cancelled"
    DEAD_LETTER_BULK_DISCARD_DONE = "dead_letter.bulk_discard.done", "bulk discard finished"
    TOPIC_CREATE = "topic.create", "topic created"
    TOPIC_UPDATE = "topic.update", "topic changed"
    TOPIC_SENSITIVITY_REQUEST = "topic.sensitivity_request", "sensitivity change requested"
    TOPIC_SENSITIVITY_APPROVE = "topic.sensitivity_approve", "sensitivity change approved"
    TOPIC_SENSITIVITY_REJECT = "topic.sensitivity_reject", "sensitivity change rejected"
    TOPIC_SENSITIVITY_CANCEL = "topic.sensitivity_cancel", "sensitivity change cancelled"
    TOPIC_SENSITIVITY_REFUSED = "topic.sensitivity_refused", "sensitivity change refused"
    EVENT_TYPE_CREATE = "event_type.create", "event type created"
    EVENT_TYPE_UPDATE = "eventtype.update", "event type changed"
    EVENT_TYPE_COMPATIBILITY = "event_type.compatibility", "event type's compatibility mode changed"
    EVENT_TYPE_COMPATIBILITY_REFUSED = "event_type.compatibility.refused", "compatibility change refused"
    SCHEMA_VERSION_CREATE = "schema_version.create", "schema version created"
    SCHEMA_VERSION_CREATE_REFUSED = "schema_version.create.refused", "schema version refused"
    SCHEMA_VERSION_UPDATE = "schemaversion.update", "schema version changed"
    SUBSCRIBER_CREATE = "subscriber.create", "subscriber registered"
    SUBSCRIBER_FOLLOW = "subscriber.follow", "subscriber follows a topic"
    SUBSCRIBER_UNFOLLOW = "subscriber.unfollow", "subscriber stops following a topic"
    SUBSCRIBER_OVERDUE = "subscriber.overdue", "subscriber behind on a value in force"
    SUBSCRIBER_CAUGHT_UP = "subscriber.caught_up", "subscriber caught up"
    RECEIPT_RECORD = "receipt.record", "subscriber's receipt recorded"
    RECEIPT_RECORD_BATCH = "receipt.record_batch", "batch of subscribers' receipts recorded"
    SCHEMA_VERSION_STATE = "schema_version.state", "schema version's state changed"
    SCHEMA_VERSION_STATE_REFUSED = "schema_version.state.refused", "schema version state change refused"
    SCHEMA_VERSION_REQUEST = "schema_version.request", "breaking schema version proposed"
    SCHEMA_VERSION_APPROVE = "schema_version.approve", "breaking schema version approved"
    SCHEMA_VERSION_REJECT = "schema_version.reject", "breaking schema version rejected"
    SCHEMA_VERSION_CANCEL = "schema_version.cancel", "breaking schema version withdrawn"
    ACCESS_GRANT = "access.grant", "rights granted"
    ACCESS_REVOKE = "access.revoke", "rights revoked"
    ACCESS_EXPIRE = "access.expire", "rights expired"
    ACCESS_REFUSED = "access.refused", "rights change refused"
    ROLE_ADD = "role.add", "role given"
    ROLE_REMOVE = "role.remove", "role taken away"
    SERVICE_TOKEN_CREATE = "service_token.create", "service token issued"
    SERVICE_TOKEN_REVOKE = "service_token.revoke", "service token revoked"
    USER_CREATE = "user.create", "user created"
    USER_CHANGE = "user.change", "user changed"
    USER_DELETE = "user.delete", "user deleted"
    SIGNIN_LOCKOUT = "signin.lockout", "sign-in locked out"
    EVENTS_EXPORT = "events.export", "history exported"
    EVENTS_EXPORT_REFUSED = "events.export.refused", "history export refused"
    AUDIT_EXPORT = "audit.export", "audit log exported"
    AUDIT_EXPORT_REFUSED = "audit.export.refused", "audit log export refused"
    SAVED_FILTER_CREATE = "saved_filter.create", "saved filter kept"
    SAVED_FILTER_DELETE = "saved_filter.delete", "saved filter deleted"


class AuditEntryQuerySet(models.QuerySet["AuditEntry"]):
    """Audit entries can be read and appended, never updated or deleted."""

    def update(self, **kwargs: Any) -> int:
        """Refuse: the audit log is append-only."""
        raise ImmutableRecordError("the audit log is append-only: entries cannot be updated")

    def delete(self) -> tuple[int, dict[str, int]]:
        """Refuse: the audit log is append-only."""
        raise ImmutableRecordError("the audit log is append-only: entries cannot be deleted")


class AuditEntry(models.Model):
    """One link of the hash-chained audit log: ``hash = sha256(prev_hash + canonical JSON)``."""

    seq = models.PositiveBigIntegerField(unique=True)
    time = models.DateTimeField()
    actor = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.PROTECT, related_name="+", db_index=False
    )
    actor_name = models.CharField(max_length=150)
    # An AuditAction value (audit_append refuses any other). Not a field choice: each new action
    # would be a migration repeating every action.
    action = models.CharField(max_length=64)
    target = models.CharField(max_length=200)
    details = models.JSONField(default=dict)
    prev_hash = models.CharField(max_length=64)
    hash = models.CharField(max_length=64)

    objects = AuditEntryQuerySet.as_manager()

    class Meta:
        ordering = ["-seq"]
        verbose_name_plural = "audit entries"
        indexes = [
            models.Index(fields=["target"], name="audit_target"),
            models.Index(fields=["action", "time"], name="audit_action_time"),
            models.Index(fields=["actor_name", "seq"], name="audit_actor_seq"),
            models.Index(fields=["time"], name="audit_time"),
        ]

    def __str__(self) -> str:
        return f"#{self.seq} {self.action} {self.target}"

    def save(self, *args: Any, **kwargs: Any) -> None:
        """Append a new entry; refuse to change a saved one."""
        if not _is_new(self):
            raise ImmutableRecordError("the audit log is append-only: entries cannot be changed")
        super().save(*args, **kwargs)

    def delete(self, *args: Any, **kwargs: Any) -> tuple[int, dict[str, int]]:
        """Refuse: the audit log is append-only."""
        raise ImmutableRecordError("the audit log is append-only: entries cannot be deleted")


class AuditHead(models.Model):
    """The chain's newest link, one row; writers lock it so two of them never fork the chain."""

    seq = models.PositiveBigIntegerField(default=0)
    hash = models.CharField(max_length=64, default="0" * 64)

    def __str__(self) -> str:
        return f"audit head #{self.seq}"


class AuditCheck(models.Model):
    """One run of the chain check: how far the chain held, and the head hash to write down outside the system."""

    checked_at = models.DateTimeField(default=timezone.now)
    checked_by = models.CharField(max_length=150, help_text="Who ran it: a person, the worker or the command.")
    from_seq = models.PositiveBigIntegerField(help_text="The first entry checked (1: the whole chain).")
    through_seq = models.PositiveBigIntegerField(help_text="The last entry found intact.")
    through_hash = models.CharField(max_length=64, help_text="That entry's hash: the head an auditor writes down.")
    checked = models.PositiveBigIntegerField(help_text="How many entries this run recomputed.")
    seconds = models.FloatField(default=0)
    broken_seq = models.PositiveBigIntegerField(null=True, blank=True)
    problem = models.TextField(blank=True, help_text="What is wrong with the first broken entry.")

    class Meta:
        ordering = ["-checked_at", "-id"]
        # The newest check, and the newest of the whole chain, are read on every audit page; the
        # worker writes a check a minute, for ever.
        indexes = [
            models.Index(fields=["-checked_at", "-id"], name="auditcheck_newest"),
            models.Index(fields=["-checked_at", "-id"], condition=Q(from_seq=1), name="auditcheck_newest_whole"),
        ]

    def __str__(self) -> str:
        state = f"broken at #{self.broken_seq}" if self.broken_seq else f"intact through #{self.through_seq}"
        return f"audit check {self.checked_at:%Y-%m-%d %H:%M}: {state}"

    @property
    def intact(self) -> bool:
        """True when every entry it checked held."""
        return self.broken_seq is None


class SavedFilterPage(models.TextChoices):
    """Which list a saved filter belongs to."""

    EVENTS = "events", "event history"
    AUDIT = "audit", "audit log"


class SavedFilter(models.Model):
    """A person's named filter of the history or the audit log: the query string of its URL."""

    owner = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="saved_filters")
    page = models.CharField(max_length=16, choices=SavedFilterPage.choices)
    name = models.CharField(max_length=100)
    query = models.TextField(help_text="The URL query string, as the filter form writes it.")
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["name"]
        constraints = [models.UniqueConstraint(fields=["owner", "page", "name"], name="unique_saved_filter_name")]

    def __str__(self) -> str:
        return f"{self.name} ({self.page})"

    def get_absolute_url(self) -> str:
        """The list, filtered."""
        route = "event-list" if self.page == SavedFilterPage.EVENTS else "audit-log"
        return f"{reverse(route)}?{self.query}" if self.query else reverse(route)


SERVICE_NAME_RE = re.compile(r"^[a-z][a-z0-9._-]*$")


def validate_service_name(name: str) -> None:
    """Refuse a service name that is not lowercase words like 'refund-service'."""
    if len(name) > 100 or not SERVICE_NAME_RE.match(name):
        raise ValidationError(
            f"service name {name!r} breaks the naming rule: lowercase letters, digits, '.', '-' and '_', "
            "starting with a letter, at most 100 characters, like 'refund-service'"
        )


class ServiceToken(models.Model):
    """A service's API token: only its public prefix and the sha256 of its secret are kept, never the secret."""

    name = models.CharField(
        max_length=100, validators=[validate_service_name], help_text="The service; it publishes as 'service:<name>'."
    )
    prefix = models.CharField(max_length=16, unique=True, help_text="The token's public part, to find it by.")
    secret_sha256 = models.CharField(max_length=64, help_text="sha256 of the whole token text.")
    topics = models.ManyToManyField(Topic, related_name="service_tokens", help_text="The only topics it may use.")
    can_publish = models.BooleanField(default=False)
    can_view = models.BooleanField(default=False)
    expires_at = models.DateTimeField(null=True, blank=True)
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.PROTECT, related_name="+"
    )
    created_at = models.DateTimeField(auto_now_add=True)
    revoked_at = models.DateTimeField(null=True, blank=True)
    revoked_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.PROTECT, related_name="+"
    )
    last_used_at = models.DateTimeField(null=True, blank=True)
    subscriber = models.ForeignKey(
        Subscriber,
        null=True,
        blank=True,
        on_delete=models.PROTECT,
        related_name="tokens",
        help_text="The subscriber whose receipts it posts (and no other's).",
    )

    class Meta:
        ordering = ["name", "-created_at"]

    def __str__(self) -> str:
        return f"{self.name} (hms_{self.prefix}_…)"

    @property
    def actor(self) -> str:
        """Who history and the audit log say did what the token did."""
        return f"service:{self.name}"


class IdempotencyKey(models.Model):
    """The first answer to a publish sent with an ``Idempotency-Key``, replayed when the same request comes again."""

    LIFETIME = dt.timedelta(hours=24)  # a key is honoured this long, then forgotten

    key = models.CharField(max_length=255)
    actor_name = models.CharField(max_length=150, help_text="Keys are per caller: a person or 'service:<name>'.")
    request_sha256 = models.CharField(max_length=64, help_text="sha256 of the method, path and body.")
    response_status = models.PositiveSmallIntegerField()
    response_body = models.JSONField()
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["actor_name", "key"], name="unique_idempotency_key")]
        indexes = [models.Index(fields=["created_at"], name="idempotencykey_created")]

    def __str__(self) -> str:
        return f"idempotency key {self.key!r} of {self.actor_name}"


class GrantDetails(models.Model):
    """What a per-topic grant records besides the right: why, by whom, when, and until when."""

    reason = models.TextField(help_text="Why the right was given; shown on /access/ and in the audit log.")
    granted_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.PROTECT, related_name="+"
    )
    granted_at = models.DateTimeField(default=timezone.now)
    expires_at = models.DateTimeField(
        null=True, blank=True, help_text="The right stops working at this moment (checked on every use)."
    )

    class Meta:
        abstract = True

    def live_at(self, moment: Any) -> bool:
        """Whether the grant still works at ``moment``."""
        return self.expires_at is None or self.expires_at > moment


class TopicUserGrant(GrantDetails, UserObjectPermissionBase):
    """A right on one topic given to one person (django-guardian's direct per-object permission)."""

    content_object = models.ForeignKey(Topic, on_delete=models.CASCADE, related_name="user_grants")

    class Meta(UserObjectPermissionBase.Meta):
        permissions = [("manage_access", "Can grant and revoke rights and roles, and issue service tokens")]
        indexes = [models.Index(fields=["user", "permission"], name="usergrant_user_permission")]

    def __str__(self) -> str:
        return f"{self.permission.codename} on {self.content_object_id} to user {self.user_id}"


class TopicGroupGrant(GrantDetails, GroupObjectPermissionBase):
    """A right on one topic given to a group: every member holds it."""

    content_object = models.ForeignKey(Topic, on_delete=models.CASCADE, related_name="group_grants")

    class Meta(GroupObjectPermissionBase.Meta):
        indexes = [models.Index(fields=["group", "permission"], name="groupgrant_group_permission")]

    def __str__(self) -> str:
        return f"{self.permission.codename} on {self.content_object_id} to group {self.group_id}"
