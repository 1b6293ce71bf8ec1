"""URLs of the bus app (stable: people bookmark them and scripts call them)."""

from django.urls import path

from busapp.views import audit, dlq, history, live, metrics, pages, publish, requests, rights

urlpatterns = [
    path("", pages.dashboard, name="dashboard"),
    path("dashboard/series/", pages.dashboard_series, name="dashboard-series"),
    path("topics/", pages.topic_list, name="topic-list"),
    path("topics/<str:name>/", pages.topic_detail, name="topic-detail"),
    path("topics/<str:name>/publish/", publish.topic_publish, name="topic-publish"),
    path("topics/<str:name>/publish/confirm/", publish.topic_publish_confirm, name="topic-publish-confirm"),
    path("topics/<str:name>/published/<uuid:envelope_id>/", publish.publish_result, name="publish-result"),
    path("topics/<str:name>/requests/<int:pk>/", requests.request_page, name="publish-request"),
    path("topics/<str:name>/requests/<int:pk>/decide/", requests.request_decide, name="publish-request-decide"),
    path("topics/<str:name>/requests/<int:pk>/cancel/", requests.request_cancel, name="publish-request-cancel"),
    path("live/", live.live_traffic, name="live"),
    path("live/events/", live.live_events_after, name="live-events"),
    path("dlq/", dlq.dead_letter_list, name="dead-letters"),
    path("dlq/bulk/estimate/", dlq.bulk_estimate_view, name="bulk-estimate"),
    path("dlq/bulk/", dlq.bulk_start_view, name="bulk-start"),
    path("dlq/bulk/<int:pk>/", dlq.bulk_detail_view, name="bulk-action"),
    path("dlq/bulk/<int:pk>/cancel/", dlq.bulk_cancel_view, name="bulk-cancel"),
    path("dlq/<int:pk>/", dlq.dead_letter_detail, name="dead-letter"),
    path("dlq/<int:pk>/replay/", dlq.dead_letter_replay_view, name="dead-letter-replay"),
    path("dlq/<int:pk>/discard/", dlq.dead_letter_discard_view, name="dead-letter-discard"),
    path("events/", history.event_list, name="event-list"),
    path("events/export.<str:fmt>", history.event_export, name="event-export"),
    path("events/<str:envelope_id>/", history.event_detail, name="event-detail"),
    path("filters/", history.saved_filter_create, name="saved-filter-create"),
    path("filters/<int:pk>/delete/", history.saved_filter_delete, name="saved-filter-delete"),
    path("audit/", audit.audit_log, name="audit-log"),
    path("audit/check/", audit.audit_check_now, name="audit-check"),
    path("audit/export.<str:fmt>", audit.audit_export, name="audit-export"),
    path("access/", rights.access_page, name="access"),
    path("access/grants/", rights.access_grant, name="access-grant"),
    path("access/revoke/", rights.access_revoke, name="access-revoke"),
    path("access/roles/", rights.access_role, name="access-role"),
    path("access/tokens/", rights.access_tokens, name="access-tokens"),
    path("access/tokens/<str:prefix>/revoke/", rights.access_token_revoke, name="access-token-revoke"),
    path("healthz", pages.health, name="health"),
    path("metrics", metrics.metrics, name="metrics"),
]
