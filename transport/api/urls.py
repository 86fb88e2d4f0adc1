from django.urls import path

from transport.api import views

urlpatterns = [
    path("devices/<str:device_id>/telemetry/", views.TelemetryIngestView.as_view(), name="device-telemetry-ingest"),
    path("devices/<str:device_id>/attributes/", views.AttributesIngestView.as_view(), name="device-attributes-ingest"),
]
