"""The WebSocket routes of the live app (gathered by ``fluxiot.routing``)."""

from django.urls import URLPattern, path

from live.consumers import EventsConsumer

websocket_urlpatterns: list[URLPattern] = [
    path("ws/events/", EventsConsumer.as_asgi(), name="live-events"),
]
