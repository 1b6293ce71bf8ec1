"""Top-level URLs: the Django admin and the bus app."""

from django.contrib import admin
from django.urls import include, path

urlpatterns = [
    path("admin/", admin.site.urls),
    path("", include("busapp.urls")),
]
