"""Websocket routes: live traffic, dead letters, receipts and drift (the ASGI app checks origin and sign-in first)."""

from django.urls import path

from busapp.consumers import BulkProgressConsumer, DeadLetterConsumer, SubscribersConsumer, TrafficConsumer

websocket_urlpatterns = [
    path("ws/traffic/", TrafficConsumer.as_asgi()),
    path("ws/dlq/", DeadLetterConsumer.as_asgi()),
    path("ws/subscribers/", SubscribersConsumer.as_asgi()),
    path("ws/dlq/bulk/<int:action_id>/", BulkProgressConsumer.as_asgi()),
]
