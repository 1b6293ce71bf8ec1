"""CloudEvents 1.0 structured JSON events (cloudevents/spec v1.0.2: spec.md, formats/json-format.md) of the history.

The bus's own envelope on Redis is unchanged: this is only another way to read an event out.
``source`` and ``dataschema`` are absolute URLs of the API (the topic, and the one schema
version), so a consumer can follow them with the same credentials it read the event with.
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Mapping
from typing import Any

from django.http import HttpRequest
from django.urls import reverse

from busapp.models import Event

MEDIA_TYPE = "application/cloudevents+json"
SPEC_VERSION = "1.0"


def base_url_of(request: HttpRequest) -> str:
    """The scheme and host the caller reached us at, without a trailing slash (the URLs' prefix)."""
    return request.build_absolute_uri("/").rstrip("/")


def topic_uri(*, base_url: str, topic: str) -> str:
    """The event's ``source``: the absolute URL of the topic in the API (GET answers it)."""
    return base_url + reverse("api-topic-detail", kwargs={"name": topic})


def schema_version_uri(*, base_url: str, topic: str, event_type: str, version: int) -> str:
    """The event's ``dataschema``: the absolute URL of the schema version in the API (GET answers it)."""
    kwargs = {"name": topic, "event_type": event_type, "number": version}
    return base_url + reverse("api-version-detail", kwargs=kwargs)


def rfc3339_utc(seconds: float) -> str:
    """Seconds since the epoch as an RFC 3339 UTC time, ``Z`` suffixed (microseconds when there are any)."""
    return dt.datetime.fromtimestamp(seconds, tz=dt.UTC).isoformat().replace("+00:00", "Z")


def cloudevent_from_envelope(
    envelope: Mapping[str, Any], *, source: str, dataschema: str, topic: str, event_type: str, version: int
) -> dict[str, Any]:
    """The structured event of a bus envelope, its topic, type and version named by the history's record."""
    stamp = envelope.get("timestamp")
    # ``time`` is optional in the spec: left out rather than made up if an envelope ever lacks a numeric timestamp.
    time = rfc3339_utc(stamp) if isinstance(stamp, int | float) and not isinstance(stamp, bool) else None
    return {
        "specversion": SPEC_VERSION,
        "id": str(envelope["id"]),
        "source": source,
        "type": event_type,
        **({"time": time} if time else {}),
        "datacontenttype": "application/json",
        "dataschema": dataschema,
        # Extension attributes: lowercase letters and digits only (spec.md, "Attribute Naming Convention").
        "hmstopic": topic,
        "hmsschemaversion": version,
        "hmspublisher": str(envelope.get("publisher", "")),
        "hmspublishedvia": str(envelope.get("source", "")),
        "data": envelope.get("payload"),
    }


def cloudevent_of(event: Event, *, base_url: str) -> dict[str, Any]:
    """One recorded event as a CloudEvents 1.0 structured JSON event (``base_url`` as ``base_url_of`` gives it)."""
    topic, kind, version = event.topic.name, event.event_type.name, event.schema_version.version
    return cloudevent_from_envelope(
        json.loads(event.envelope),
        source=topic_uri(base_url=base_url, topic=topic),
        dataschema=schema_version_uri(base_url=base_url, topic=topic, event_type=kind, version=version),
        topic=topic,
        event_type=kind,
        version=version,
    )
