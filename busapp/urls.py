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
    path("events/<str:envelope_id>/", views.event_detail, name="event-detail"),
    path("healthz", views.health, name="health"),
]
