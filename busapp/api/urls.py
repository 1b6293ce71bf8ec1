"""URLs of the JSON API, mounted at /api/ (stable: services call them)."""

from django.urls import path, re_path

from busapp.api import asyncapi, dead_letters, events, receipts, registry, schema_versions, views

urlpatterns = [
    path("topics/", views.TopicListView.as_view(), name="api-topic-list"),
    path("topics/<str:name>/", views.TopicDetailView.as_view(), name="api-topic-detail"),
    # POST publishes; GET catches up on what was published (the name stays: callers reverse it).
    path("topics/<str:name>/events/", views.TopicEventsView.as_view(), name="api-event-publish"),
    path("topics/<str:name>/events/batch/", views.TopicEventsBatchView.as_view(), name="api-event-publish-batch"),
    # The registry (busapp/api/registry.py); schemas/ above its versions/ stays for the callers that use it.
    path("topics/<str:name>/types/", registry.EventTypesView.as_view(), name="api-event-types"),
    path(
        "topics/<str:name>/types/<str:event_type>/versions/",
        registry.VersionsView.as_view(),
        name="api-versions",
    ),
    path(
        "topics/<str:name>/types/<str:event_type>/versions/check/",
        registry.VersionCheckView.as_view(),
        name="api-version-check",
    ),
    path(
        "topics/<str:name>/types/<str:event_type>/versions/<int:number>/",
        registry.VersionDetailView.as_view(),
        name="api-version-detail",
    ),
    path(
        "topics/<str:name>/types/<str:event_type>/versions/<int:number>/state/",
        registry.VersionStateView.as_view(),
        name="api-version-state",
    ),
    path(
        "topics/<str:name>/types/<str:event_type>/latest/",
        events.EventInForceView.as_view(),
        name="api-event-in-force",
    ),
    path(
        "topics/<str:name>/types/<str:event_type>/compatibility/",
        registry.CompatibilityView.as_view(),
        name="api-event-type-compatibility",
    ),
    path(
        "topics/<str:name>/types/<str:event_type>/schemas/",
        schema_versions.SchemaVersionsView.as_view(),
        name="api-schema-versions",
    ),
    path("events/", events.EventListView.as_view(), name="api-event-list"),
    path("events/<str:envelope_id>/", events.EventDetailView.as_view(), name="api-event-detail"),
    path("events/<str:envelope_id>/receipts/", receipts.EventReceiptsView.as_view(), name="api-event-receipts"),
    path("receipts/", receipts.ReceiptsBatchView.as_view(), name="api-receipts-batch"),
    path("dlq/", dead_letters.DeadLetterListView.as_view(), name="api-dead-letter-list"),
    path("dlq/<int:letter_id>/replay/", dead_letters.DeadLetterReplayView.as_view(), name="api-dead-letter-replay"),
    path("schema/", views.SchemaView.as_view(), name="api-schema"),
    # The split view serves its start-up script as a file: the pages' CSP allows no inline script.
    path("docs/", views.DocsView.as_view(url_name="api-schema"), name="api-docs"),
    # AsyncAPI 3.0, generated from the database; the page renders it in a sandboxed frame (see busapp/api/asyncapi.py).
    path("asyncapi.json", asyncapi.AsyncApiJsonView.as_view(), name="api-asyncapi-json"),
    path("asyncapi.yaml", asyncapi.AsyncApiYamlView.as_view(), name="api-asyncapi-yaml"),
    path("asyncapi/", asyncapi.AsyncApiDocsView.as_view(), name="api-asyncapi-docs"),
    path("asyncapi/frame/", asyncapi.AsyncApiFrameView.as_view(), name="api-asyncapi-frame"),
    # Any other path, newlines included (a typed segment that does not match sends them here): 404 in JSON.
    re_path(r"^(?P<path>(?s:.*))$", views.not_found),
]
