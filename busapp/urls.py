"""URLs of the bus app (stable: people bookmark them and scripts call them)."""

from django.urls import path

from busapp import views

urlpatterns = [
    path("", views.dashboard, name="dashboard"),
    path("topics/", views.topic_list, name="topic-list"),
    path("topics/<str:name>/", views.topic_detail, name="topic-detail"),
    path("topics/<str:name>/publish/", views.topic_publish, name="topic-publish"),
    path("topics/<str:name>/publish/confirm/", views.topic_publish_confirm, name="topic-publish-confirm"),
    path("topics/<str:name>/published/<uuid:envelope_id>/", views.publish_result, name="publish-result"),
    path("topics/<str:name>/requests/<int:pk>/", views.publish_request_detail, name="publish-request"),
    path("topics/<str:name>/requests/<int:pk>/decide/", views.publish_request_decision, name="publish-request-decide"),
    path("topics/<str:name>/requests/<int:pk>/cancel/", views.publish_request_withdraw, name="publish-request-cancel"),
    path("events/<str:envelope_id>/", views.event_detail, name="event-detail"),
    path("healthz", views.health, name="health"),
]
