"""Websocket routes: live traffic and dead letters (the ASGI app puts origin and sign-in checks before them)."""

from django.urls import path

from busapp.consumers import BulkProgressConsumer, DeadLetterConsumer, TrafficConsumer

websocket_urlpatterns = [
    path("ws/traffic/", TrafficConsumer.as_asgi()),
    path("ws/dlq/", DeadLetterConsumer.as_asgi()),
    path("ws/dlq/bulk/<int:action_id>/", BulkProgressConsumer.as_asgi()),
]
