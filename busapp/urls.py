"""URLs of the bus app (stable: people bookmark them and scripts call them)."""

from django.urls import path

from busapp import views

urlpatterns = [
    path("", views.home, name="home"),
    path("healthz", views.health, name="health"),
]
