"""WebSocket routes of every app, gathered in one list for the ASGI router."""

from django.urls import URLPattern

from live.routing import websocket_urlpatterns as live_patterns

websocket_urlpatterns: list[URLPattern] = [*live_patterns]
