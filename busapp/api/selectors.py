"""Reads for the API: topics with their event types and active schema versions, in a fixed number of queries."""

from __future__ import annotations

from collections.abc import Sequence

from django.contrib.auth.models import User
from django.db.models import Prefetch, QuerySet

from busapp.api.authentication import ServiceCaller
from busapp.models import EventType, SchemaVersion, Topic
from busapp.permissions import PUBLISH_TOPIC
from busapp.selectors import topic_names_with_right


def topics_with_schemas(topics: QuerySet[Topic]) -> QuerySet[Topic]:
    """The topics with their event types and each type's active schema versions (``active_versions``)."""
    versions = Prefetch("schema_versions", queryset=SchemaVersion.objects.active(), to_attr="active_versions")
    event_types = Prefetch("event_types", queryset=EventType.objects.order_by("name").prefetch_related(versions))
    return topics.order_by("name").prefetch_related(event_types)


def topic_names_publishable(caller: User | ServiceCaller, topics: Sequence[Topic]) -> set[str]:
    """Which of these topics the caller may publish to, in one query at most."""
    if isinstance(caller, ServiceCaller):
        return {topic.name for topic in topics} if caller.token.can_publish else set()
    return topic_names_with_right(caller, PUBLISH_TOPIC, Topic.objects.filter(pk__in=[topic.pk for topic in topics]))
