from __future__ import annotations

from typing import Any

from django.contrib import admin
from django.http import HttpRequest

from devices.admin import DeviceAdmin
from fluxiot.admin import ReadOnlyTabularInline
from telemetry.models import DeadLetter, LatestValue


class LatestValueInline(ReadOnlyTabularInline):
    model = LatestValue
    fields = ["key", "value", "ts"]
    verbose_name_plural = "Latest telemetry"


# The device page shows its latest telemetry (the registry does not know about telemetry itself).
DeviceAdmin.inlines = [LatestValueInline, *DeviceAdmin.inlines]


@admin.register(LatestValue)
class LatestValueAdmin(admin.ModelAdmin):
    list_display = ["device", "key", "value", "ts"]
    list_filter = ["key"]
    search_fields = ["device__id", "key"]
    list_select_related = ["device"]

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False


@admin.register(DeadLetter)
class DeadLetterAdmin(admin.ModelAdmin):
    list_display = ["received_at", "reason", "device_id", "topic", "detail"]
    list_filter = ["reason", "received_at"]
    search_fields = ["device_id", "topic", "detail"]
    readonly_fields = ["received_at", "reason", "device_id", "topic", "detail", "payload"]
    date_hierarchy = "received_at"

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False
