"""Websocket routes (live traffic and dead letters arrive with the live-traffic issue)."""

from django.urls import URLPattern

websocket_urlpatterns: list[URLPattern] = []
