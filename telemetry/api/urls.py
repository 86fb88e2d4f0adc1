from django.urls import path

from telemetry.api import views

urlpatterns = [
    path("devices/<str:device_id>/metrics/", views.DeviceMetricsView.as_view(), name="device-metrics"),
    path("telemetry/", views.TelemetryRangeView.as_view(), name="telemetry-range"),
]
