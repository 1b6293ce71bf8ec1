"""What the API reads and writes: publish bodies, their answers, topics with their event types and schemas."""

from __future__ import annotations

from typing import Any

from rest_framework import serializers

from busapp.models import EventType, SchemaVersion, Topic

BATCH_MAX_EVENTS = 1000


class EventInSerializer(serializers.Serializer[Any]):
    """One event to publish: its type on the topic and its payload."""

    type = serializers.CharField(max_length=200, help_text="The event type, like 'tax_policy.updated'.")
    payload = serializers.DictField(help_text="Checked against the type's active JSON Schema version.")


class BatchInSerializer(serializers.Serializer[Any]):
    """Up to 1,000 events for one topic, published in one transaction and one Redis round trip."""

    events = serializers.ListField(
        child=serializers.DictField(),
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
    status = serializers.ChoiceField(choices=["published", "pending"], help_text="pending: Redis is down, queued.")
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
