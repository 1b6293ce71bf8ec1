"""The bus's AsyncAPI 3.0 document, generated from the database: topics, event types, active schemas, Redis.

A selector: it reads and never writes. Each topic is a channel whose address is its Redis
Pub/Sub channel, with its stream named in ``x-redis-stream``; each event type is a message
whose payload is the envelope as published on Redis, the type's active schema (Draft 2020-12)
embedded as its ``payload`` member; each topic's ``<topic>.dlq`` is a channel of its own.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable, Iterator
from typing import Any
from urllib.parse import urldefrag, urljoin, urlsplit

from django.conf import settings
from django.db.models import QuerySet
from redis.connection import parse_url

from busapp.api.selectors import topics_with_schemas
from busapp.models import EventType, SchemaVersion, SchemaVersionState, Source, Topic
from busapp.publishing import stream_key
from busapp.validation import schema_fingerprint, schema_uri

ASYNCAPI_VERSION = "3.0.0"
# How AsyncAPI 3.0 names a JSON Schema of a draft it does not list itself (its Multi Format Schema Object).
SCHEMA_FORMAT = "application/schema+json;version=draft-2020-12"
JSON_SCHEMA_DIALECT = "https://json-schema.org/draft/2020-12/schema"
DOCUMENT_VERSION = "1.0.0"
DEAD_LETTER_MESSAGE = "dead_letter"
# The stream entry's one field, which holds the envelope (XADD <key> MAXLEN ~ N * event <envelope>).
STREAM_FIELD = "event"


def asyncapi_document(*, topics: QuerySet[Topic]) -> dict[str, Any]:
    """The AsyncAPI 3.0 document of these topics (the caller's visible ones): channels, operations, messages."""
    found = list(topics_with_schemas(topics))
    stored = _StoredSchemas()
    channels: dict[str, Any] = {}
    operations: dict[str, Any] = {}
    for topic in found:
        channels[topic.name] = topic_channel(topic, stored)
        channels[topic.dlq_channel] = dead_letter_channel(topic)
        operations.update(topic_operations(topic))
    body = {
        "servers": asyncapi_servers(),
        "channels": channels,
        "operations": operations,
        "components": {"messages": {DEAD_LETTER_MESSAGE: dead_letter_message()}},
    }
    return {
        "asyncapi": ASYNCAPI_VERSION,
        "info": {
            "title": "HMS Synchronization Event Bus",
            # Build metadata: the fingerprint of what follows, so a reader sees at a glance that it changed.
            "version": f"{DOCUMENT_VERSION}+{schema_fingerprint(body)[:12]}",
            "description": (
                "Every topic you may see on the bus, generated from the schema registry. A publish is one "
                "MULTI/EXEC on Redis: `PUBLISH <topic> <envelope>` for Pub/Sub subscribers and "
                f"`XADD stream:<topic> MAXLEN ~ N * {STREAM_FIELD} <envelope>` for durable consumers. "
                "An envelope that fails its schema is dead-lettered to `<topic>.dlq` the same way."
            ),
        },
        "defaultContentType": "application/json",
        **body,
    }


def topic_channel(topic: Topic, stored: _StoredSchemas) -> dict[str, Any]:
    """A topic's channel: its Pub/Sub address, its stream, and one message per event type."""
    messages = {
        event_type.name: event_type_message(topic, event_type, stored) for event_type in topic.event_types.all()
    }
    sensitive = (
        " Sensitive: publishes through the dashboard need a second person's approval." if topic.sensitive else ""
    )
    return {
        "address": topic.channel,
        "title": topic.name,
        "description": (
            f"{topic.description or 'Events of ' + topic.name}\n\nPub/Sub channel `{topic.channel}`; every "
            f"event is also in the stream `{stream_key(topic.channel)}` (about {topic.stream_retention} kept), "
            f"as its field `{STREAM_FIELD}`.{sensitive}"
        ),
        "messages": messages,
        "x-redis-stream": redis_stream(topic.channel, topic.stream_retention),
    }


def dead_letter_channel(topic: Topic) -> dict[str, Any]:
    """A topic's dead-letter channel ``<topic>.dlq``: what failed validation, with its errors."""
    return {
        "address": topic.dlq_channel,
        "title": topic.dlq_channel,
        "description": (
            f"Dead letters of `{topic.name}`: envelopes that were not JSON or failed their schema, with the "
            f"errors found. Also in the stream `{stream_key(topic.dlq_channel)}`."
        ),
        "messages": {DEAD_LETTER_MESSAGE: {"$ref": f"#/components/messages/{DEAD_LETTER_MESSAGE}"}},
        "x-redis-stream": redis_stream(topic.dlq_channel, topic.stream_retention),
    }


def topic_operations(topic: Topic) -> dict[str, Any]:
    """What a client of the bus does on the topic: publish to it, subscribe to it, read its dead letters."""
    channel, dlq = _pointer("channels", topic.name), _pointer("channels", topic.dlq_channel)
    messages = [{"$ref": f"{channel}/messages/{_escaped(event_type.name)}"} for event_type in topic.event_types.all()]
    return {
        f"{topic.name}.send": {
            "action": "send",
            "channel": {"$ref": channel},
            "title": f"Publish to {topic.name}",
            "description": (
                "Publishers send an envelope with MULTI/EXEC (PUBLISH and XADD), or through the dashboard and "
                "its JSON API, which check it first. Whatever fails its schema is dead-lettered."
            ),
            "messages": messages,
        },
        f"{topic.name}.receive": {
            "action": "receive",
            "channel": {"$ref": channel},
            "title": f"Subscribe to {topic.name}",
            "description": (
                f"SUBSCRIBE {topic.channel} to hear events as they are published, or read "
                f"{stream_key(topic.channel)} with a consumer group to miss none."
            ),
            "messages": messages,
        },
        f"{topic.dlq_channel}.receive": {
            "action": "receive",
            "channel": {"$ref": dlq},
            "title": f"Read the dead letters of {topic.name}",
            "messages": [{"$ref": f"{dlq}/messages/{DEAD_LETTER_MESSAGE}"}],
        },
    }


def event_type_message(topic: Topic, event_type: EventType, stored: _StoredSchemas) -> dict[str, Any]:
    """One event type's message: the envelope, with the type's active schema as its payload."""
    versions: list[SchemaVersion] = getattr(event_type, "active_versions", None) or list(
        event_type.schema_versions.active()
    )
    message: dict[str, Any] = {"name": event_type.name, "title": event_type.name, "contentType": "application/json"}
    if event_type.description:
        message["summary"] = event_type.description
    if not versions:
        message["deprecated"] = True
        message["description"] = "No active schema version: nothing can be published as this type."
        payload_schema: Any = False
    else:
        active = versions[0]
        message["x-schema-version"] = active.version
        message["description"] = f"Schema v{active.version} in force: every publish is checked against it."
        if active.state == SchemaVersionState.DEPRECATED:
            message["deprecated"] = True
            message["description"] = f"Schema v{active.version} in force, deprecated: still accepted, being retired."
        payload_schema = payload_schema_bundled(
            active.authored, uri=schema_uri(topic.name, event_type.name, active.version), stored=stored
        )
    message["payload"] = {"schemaFormat": SCHEMA_FORMAT, "schema": envelope_schema(topic, event_type, payload_schema)}
    return message


def envelope_schema(topic: Topic, event_type: EventType, payload_schema: Any) -> dict[str, Any]:
    """The envelope as it goes on Redis: the seed's ``{id, type, timestamp, payload}`` and the keys we add."""
    return {
        "$schema": JSON_SCHEMA_DIALECT,
        "type": "object",
        "required": ["id", "type", "timestamp", "payload"],
        "properties": {
            "id": {"type": "string", "description": "The envelope id (a UUID): subscribers apply each id once."},
            "type": {"const": event_type.name},
            "timestamp": {"type": "number", "description": "When it was published, in seconds since the epoch."},
            "topic": {"const": topic.name, "description": "Added by the dashboard; seed subscribers ignore it."},
            "schema_version": {"type": "integer", "description": "The schema version the payload was checked against."},
            "source": {"enum": list(Source.values), "description": "Where it was published from."},
            "publisher": {"type": "string", "description": "Who published it: a person or service:<name>."},
            "payload": payload_schema,
        },
    }


def dead_letter_message() -> dict[str, Any]:
    """The message on every ``<topic>.dlq``: what arrived, the errors, when and from where."""
    error = {
        "type": "object",
        "required": ["path", "message"],
        "properties": {
            "path": {"type": "string", "description": "A JSON pointer into what arrived, like /payload/x."},
            "message": {"type": "string"},
        },
    }
    schema = {
        "$schema": JSON_SCHEMA_DIALECT,
        "type": "object",
        "required": ["event", "errors", "received_at", "source", "topic"],
        "properties": {
            "event": {"description": "What arrived: its JSON, or its text when it was not JSON."},
            "errors": {"type": "array", "items": error},
            "received_at": {"type": "number", "description": "When it arrived, in seconds since the epoch."},
            "source": {"enum": list(Source.values)},
            "topic": {"type": "string"},
        },
    }
    return {
        "name": DEAD_LETTER_MESSAGE,
        "title": "Dead letter",
        "contentType": "application/json",
        "payload": {"schemaFormat": SCHEMA_FORMAT, "schema": schema},
    }


def redis_stream(channel: str, maxlen: int) -> dict[str, Any]:
    """Where a channel's messages are kept for durable consumers (``x-redis-stream``)."""
    return {"key": stream_key(channel), "field": STREAM_FIELD, "maxlen": maxlen}


def asyncapi_servers() -> dict[str, Any]:
    """The bus's Redis from settings: its URL, or each Sentinel; never a user name or password."""
    parsed = parse_url(settings.REDIS_URL)
    database = parsed.get("db", 0)
    protocol = "rediss" if settings.REDIS_URL.startswith("rediss://") else "redis"
    if settings.REDIS_SENTINELS:
        return {
            f"sentinel-{number}": {
                "host": _host_port(host, port),
                "protocol": protocol,
                "pathname": f"/{database}",
                "title": f"Redis Sentinel {number}",
                "description": (
                    f"Ask it for the master of `{settings.REDIS_SENTINEL_MASTER}` (SENTINEL get-master-addr-by-name),"
                    f" then use database {database} there."
                ),
                "x-sentinel-master": settings.REDIS_SENTINEL_MASTER,
            }
            for number, (host, port) in enumerate(settings.REDIS_SENTINELS, start=1)
        }
    if "path" in parsed:  # a Unix socket: only a process on the same machine reaches it
        where = {"host": "localhost", "pathname": str(parsed["path"])}
    else:
        address = urlsplit(settings.REDIS_URL)
        where = {"host": _host_port(address.hostname or "localhost", address.port or 6379), "pathname": f"/{database}"}
    return {"bus": {**where, "protocol": protocol, "title": "The bus's Redis"}}


def _host_port(host: str, port: int) -> str:
    """``host:port``, an IPv6 address in brackets."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _escaped(key: str) -> str:
    """A key as a JSON pointer part (RFC 6901)."""
    return key.replace("~", "~0").replace("/", "~1")


def _pointer(*keys: str) -> str:
    """A reference to a place in this document."""
    return "#/" + "/".join(_escaped(key) for key in keys)


class _StoredSchemas:
    """Every stored schema version by URI (its URN and its own ``$id``), read once and only when a ``$ref`` needs it."""

    def __init__(self) -> None:
        self._by_uri: dict[str, Any] | None = None

    def get(self, uri: str) -> Any:
        """The stored schema at this URI, or None."""
        if self._by_uri is None:
            self._by_uri = {}
            rows = SchemaVersion.objects.values_list("event_type__topic__name", "event_type__name", "version", "schema")
            for topic, event_type, version, schema in rows:
                self._by_uri[schema_uri(topic, event_type, version)] = schema
                if isinstance(schema, dict) and isinstance(schema.get("$id"), str):
                    self._by_uri.setdefault(schema["$id"], schema)
        return self._by_uri.get(uri)


def payload_schema_bundled(schema: Any, *, uri: str, stored: _StoredSchemas) -> Any:
    """The schema as one Draft 2020-12 compound document: each stored schema it references embedded in ``$defs``.

    The root gets its registry URN as ``$id`` (unless it has one), and each referenced schema
    its URI as ``$id`` under ``$defs``: the ``$ref``s stay as written and resolve inside the
    document (JSON Schema's own bundling), with no registry and nothing fetched.
    """
    if not isinstance(schema, dict):
        return schema
    bundled = copy.deepcopy(schema) if "$id" in schema else {"$id": uri, **copy.deepcopy(schema)}
    base = bundled["$id"] if isinstance(bundled["$id"], str) else uri
    embedded: dict[str, Any] = {}
    inside = set(_resource_ids(bundled, base))
    pending = [(bundled, base)]
    while pending:
        node, node_base = pending.pop()
        for target in _external_targets(node, node_base):
            if target in inside or target in embedded:
                continue
            found = stored.get(target)
            if not isinstance(found, dict):
                continue  # left as an absolute URI: nothing stored answers to it
            resource = {**copy.deepcopy(found), "$id": target}
            embedded[target] = resource
            inside.update(_resource_ids(resource, target))
            pending.append((resource, target))
    if embedded:
        definitions = bundled.setdefault("$defs", {})
        for target, resource in sorted(embedded.items()):
            definitions[target if target not in definitions else f"{target}#embedded"] = resource
    return bundled


def _children(node: Any) -> Iterable[Any]:
    """The values directly inside a JSON value."""
    if isinstance(node, dict):
        return node.values()
    if isinstance(node, list):
        return node
    return ()


def _resource_ids(node: Any, base: str) -> Iterator[str]:
    """The absolute URIs of a schema and the resources nested in it (each ``$id``), fragments dropped."""
    if isinstance(node, dict) and isinstance(node.get("$id"), str):
        base = urldefrag(urljoin(base, node["$id"])).url
        yield base
    for child in _children(node):
        yield from _resource_ids(child, base)


def _external_targets(node: Any, base: str) -> Iterator[str]:
    """The absolute URI (no fragment) each ``$ref`` or ``$dynamicRef`` not local to its resource points at."""
    if isinstance(node, dict):
        if isinstance(node.get("$id"), str):
            base = urldefrag(urljoin(base, node["$id"])).url
        for keyword in ("$ref", "$dynamicRef"):
            reference = node.get(keyword)
            if isinstance(reference, str) and not reference.startswith("#"):
                yield urldefrag(urljoin(base, reference)).url
    for child in _children(node):
        yield from _external_targets(child, base)
