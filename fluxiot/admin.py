"""The admin site: the stock Django admin with a fleet summary on its index page."""

from __future__ import annotations

from typing import Any

from django.contrib import admin
from django.db.models import Count
from django.http import HttpRequest
from django.template.response import TemplateResponse


class FluxAdminSite(admin.AdminSite):
    site_header = "FluxIoT control room"
    site_title = "FluxIoT"
    index_title = "Fleet"

    def index(self, request: HttpRequest, extra_context: dict[str, Any] | None = None) -> TemplateResponse:
        from devices.choices import DeviceStatus
        from devices.models import Device

        context = dict(extra_context or {})
        if request.user.has_perm("devices.view_device"):
            counts = dict(Device.objects.order_by().values_list("status").annotate(n=Count("pk")))
            context["device_status_counts"] = [
                {"status": value, "label": label, "count": counts.get(value, 0)}
                for value, label in DeviceStatus.choices
            ]
            context["device_total"] = sum(counts.values())
        return super().index(request, extra_context=context)


class ReadOnlyTabularInline(admin.TabularInline):
    """An inline that only shows rows (history, measurements): every listed field read-only, no
    adding, changing or deleting."""

    extra = 0

    def get_readonly_fields(self, request: HttpRequest, obj: Any = None) -> list[str]:
        return list(self.fields or [])

    def has_add_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False
