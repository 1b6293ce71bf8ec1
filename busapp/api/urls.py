"""URLs of the JSON API, mounted at /api/ (stable: services call them)."""

from django.urls import path, re_path
from drf_spectacular.views import SpectacularAPIView, SpectacularSwaggerSplitView

from busapp.api import views

urlpatterns = [
    path("topics/", views.TopicListView.as_view(), name="api-topic-list"),
    path("topics/<str:name>/", views.TopicDetailView.as_view(), name="api-topic-detail"),
    path("topics/<str:name>/events/", views.TopicEventsView.as_view(), name="api-event-publish"),
    path("topics/<str:name>/events/batch/", views.TopicEventsBatchView.as_view(), name="api-event-publish-batch"),
    path("schema/", SpectacularAPIView.as_view(), name="api-schema"),
    # The split view serves its start-up script as a file: the pages' CSP allows no inline script.
    path("docs/", SpectacularSwaggerSplitView.as_view(url_name="api-schema"), name="api-docs"),
    re_path(r"^(?P<path>.*)$", views.not_found),
]
