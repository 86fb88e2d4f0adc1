"""The admin site: the stock Django admin, its index turned into a live fleet dashboard, with two
more live pages (every event as it happens, the group tree with counts).

The numbers on these pages come from two grouped counts (devices by type and status, devices by
group and status) cached for ``DASHBOARD_CACHE_SECONDS`` in the shared cache: however many operators
watch, the database counts the fleet at most once per period. The pages keep themselves current over
the WebSocket ``/ws/events/`` (``static/fluxiot/live.js``): an event that changes a count makes the page
fetch the cached summary again. See docs/ADMIN.md.

With the ``alarms`` app installed the fleet summary also holds the active alarms per severity
(``alarms.services.active_counts``, one grouped count over an indexed pair of columns), shown only to
users with ``alarms.view_alarm``; a device's page lists its alarms (``static/fluxiot/alarms.js``).
"""

from __future__ import annotations

import time
from typing import Any

from django.apps import apps
from django.conf import settings
from django.contrib import admin
from django.core.cache import cache
from django.core.exceptions import PermissionDenied
from django.db.models import Count
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.template.response import TemplateResponse
from django.urls import URLPattern, path, reverse

from fluxiot import events

# Where the pages' JavaScript opens its WebSocket (the `live` app's consumer).
LIVE_WS_PATH = "/ws/events/"
FLEET_CACHE_KEY = "admin:fleet-summary:v2"  # v2: with the active alarms
GROUPS_CACHE_KEY = "admin:group-tree:v1"
VIEW_DEVICES = "devices.view_device"
VIEW_ALARMS = "alarms.view_alarm"
# The API's action_perms of alarms/{id}/ack/ and alarms/{id}/clear/ (alarms.api.views.AlarmViewSet).
ACK_ALARMS = "alarms.acknowledge_alarm"
CLEAR_ALARMS = "alarms.change_alarm"

# The alarm events (data: alarm, device, severity, transition, actor).
ALARM_EVENT_TYPES = [
    events.ALARM_RAISED,
    events.ALARM_UPDATED,
    events.ALARM_ACKNOWLEDGED,
    events.ALARM_CLEARED,
]

# The event types the live event page offers as filters (the WebSocket accepts others too).
LIVE_EVENT_TYPES = [
    events.TELEMETRY_RECEIVED,
    events.DEVICE_STATUS_CHANGED,
    events.COMMAND_STATUS_CHANGED,
    events.COMMAND_BATCH_CREATED,
    events.DEVICE_CREATED,
    events.DEVICE_UPDATED,
    events.DEVICE_DELETED,
    events.DEVICES_IMPORTED,
    events.DEVICES_MOVED,
    events.DEVICE_ATTRIBUTES_UPDATED,
    events.DEVICE_ACTIVATION_CHANGED,
    events.DEVICE_CREDENTIALS_ROTATED,
    events.GROUP_CREATED,
    events.GROUP_UPDATED,
    events.GROUP_DELETED,
    *ALARM_EVENT_TYPES,
]


def cache_seconds() -> float:
    """How long a computed summary is served from the cache (``DASHBOARD_CACHE_SECONDS``, default 3)."""
    return float(getattr(settings, "DASHBOARD_CACHE_SECONDS", 3.0))


def alarms_installed() -> bool:
    """Alarm panels are shown only once an ``alarms`` app exists: nothing made up before that."""
    return apps.is_installed("alarms")


def alarm_severities() -> list[tuple[str, str]]:
    """The alarm severities, worst first (value, label); none without the alarms app."""
    if not alarms_installed():
        return []
    from alarms.choices import AlarmSeverity

    return list(AlarmSeverity.choices)


def may_view_alarms(user: Any) -> bool:
    return alarms_installed() and user.has_perm(VIEW_ALARMS)


def offered_event_types(user: Any) -> list[str]:
    """The types of LIVE_EVENT_TYPES the user may receive (the WebSocket's own permission rules:
    ticking only types one may not see would be refused)."""
    from live.permissions import SUBJECT_PERMISSIONS, TYPE_PERMISSIONS, subject_of

    offered = []
    for event_type in LIVE_EVENT_TYPES:
        if subject_of(event_type) == "alarm" and not alarms_installed():
            continue
        needed = TYPE_PERMISSIONS.get(event_type) or SUBJECT_PERMISSIONS.get(subject_of(event_type))
        if user.is_superuser or (needed is not None and user.has_perms(needed)):
            offered.append(event_type)
    return offered


def _now_ms() -> int:
    return int(time.time() * 1000)


def _ratio(part: int, whole: int) -> float | None:
    return round(part / whole, 4) if whole else None


def _cached(key: str, compute: Any) -> dict[str, Any]:
    summary = cache.get(key)
    if summary is None:
        summary = compute()
        summary["computed_at"] = _now_ms()
        summary["ttl"] = cache_seconds()
        cache.set(key, summary, cache_seconds())
    return summary


def clear_cached_summaries() -> None:
    """Forget the cached summaries (tests; after bulk changes made by hand)."""
    cache.delete_many([FLEET_CACHE_KEY, GROUPS_CACHE_KEY])


def compute_fleet_summary() -> dict[str, Any]:
    """Devices by type and status: one grouped count over the two indexed columns; with the alarms
    app, the active alarms per severity too (one more grouped count)."""
    from devices.choices import DeviceStatus, DeviceType
    from devices.models import Device

    statuses = DeviceStatus.values
    by_status = dict.fromkeys(statuses, 0)
    by_type: dict[str, dict[str, int]] = {t: dict.fromkeys(statuses, 0) for t in DeviceType.values}
    rows = Device.objects.order_by().values_list("device_type", "status").annotate(n=Count("pk"))
    for device_type, status, n in rows:
        by_type.setdefault(device_type, dict.fromkeys(statuses, 0))[status] = n
        by_status[status] = by_status.get(status, 0) + n
    total = sum(by_status.values())
    online = by_status.get(DeviceStatus.ONLINE, 0)
    summary: dict[str, Any] = {
        "total": total,
        "online": online,
        "online_ratio": _ratio(online, total),
        "by_status": by_status,
        "by_type": {t: {**counts, "total": sum(counts.values())} for t, counts in by_type.items()},
    }
    if alarms_installed():
        from alarms.services import active_counts

        alarms = active_counts()
        summary["alarms"] = {**alarms, "total": sum(alarms.values())}
    return summary


def fleet_summary_for(user: Any) -> dict[str, Any]:
    """The cached fleet summary as ``user`` may see it: the alarm counts only with alarms.view_alarm."""
    summary = fleet_summary()
    if "alarms" in summary and not may_view_alarms(user):
        summary = {key: value for key, value in summary.items() if key != "alarms"}
    return summary


def fleet_summary() -> dict[str, Any]:
    """The fleet's counts, from the cache when they are fresh enough."""
    return _cached(FLEET_CACHE_KEY, compute_fleet_summary)


def compute_group_tree() -> dict[str, Any]:
    """Every group with its devices: ``direct`` (in the group itself) and ``total``/``online`` (the
    group and every group below it, so a parent's numbers include its children's). Two queries: the
    groups, and one count of devices by group and status; the sums up the tree are made here."""
    from devices.choices import DeviceStatus
    from devices.models import Device, DeviceGroup

    groups = list(DeviceGroup.objects.order_by("path").values_list("id", "name", "parent_id", "path"))
    direct: dict[int | None, dict[str, int]] = {}
    for group_id, status, n in Device.objects.order_by().values_list("group_id", "status").annotate(n=Count("pk")):
        direct.setdefault(group_id, {})[status] = n
    nodes: dict[int, dict[str, Any]] = {}
    for group_id, name, parent_id, group_path in groups:
        counts = direct.get(group_id, {})
        nodes[group_id] = {
            "id": group_id,
            "name": name,
            "parent": parent_id,
            "depth": max(group_path.count("/") - 2, 0),
            "direct": sum(counts.values()),
            "direct_online": counts.get(DeviceStatus.ONLINE, 0),
            "total": 0,
            "online": 0,
            "by_status": dict.fromkeys(DeviceStatus.values, 0),
            "children": 0,
        }
    for group_id, _name, _parent, group_path in groups:
        counts = direct.get(group_id, {})
        if not counts:
            continue
        for ancestor in (int(part) for part in group_path.strip("/").split("/") if part):
            node = nodes.get(ancestor)
            if node is None:  # a path that is being rewritten by a concurrent move
                continue
            for status, n in counts.items():
                node["total"] += n
                node["by_status"][status] = node["by_status"].get(status, 0) + n
            node["online"] += counts.get(DeviceStatus.ONLINE, 0)
    for node in nodes.values():
        node["online_ratio"] = _ratio(node["online"], node["total"])
        if node["parent"] in nodes:
            nodes[node["parent"]]["children"] += 1
    ungrouped = direct.get(None, {})
    ungrouped_total = sum(ungrouped.values())
    ungrouped_online = ungrouped.get(DeviceStatus.ONLINE, 0)
    return {
        "groups": [nodes[group_id] for group_id, *_ in groups],
        "ungrouped": {
            "by_status": {status: ungrouped.get(status, 0) for status in DeviceStatus.values},
            "total": ungrouped_total,
            "online": ungrouped_online,
            "online_ratio": _ratio(ungrouped_online, ungrouped_total),
        },
    }


def group_tree() -> dict[str, Any]:
    return _cached(GROUPS_CACHE_KEY, compute_group_tree)


class FluxAdminSite(admin.AdminSite):
    site_header = "FluxIoT control room"
    site_title = "FluxIoT"
    index_title = "Fleet dashboard"

    def get_urls(self) -> list[URLPattern]:
        own = [
            path("dashboard/summary/", self.admin_view(self.fleet_summary_view), name="fleet_summary"),
            path("live/events/", self.admin_view(self.live_events_view), name="live_events"),
            path("live/groups/", self.admin_view(self.group_tree_view), name="live_groups"),
        ]
        return own + super().get_urls()

    def get_app_list(self, request: HttpRequest, app_label: str | None = None) -> list[dict[str, Any]]:
        """The stock list, with a "Live" section first (the navigation sidebar shows it on every page)."""
        app_list = super().get_app_list(request, app_label)
        if app_label is None and request.user.has_perm(VIEW_DEVICES):
            app_list.insert(0, self._live_section(request))
        return app_list

    def _live_section(self, request: HttpRequest) -> dict[str, Any]:
        def entry(name: str, object_name: str, url: str) -> dict[str, Any]:
            return {
                "name": name,
                "object_name": object_name,
                "admin_url": url,
                "add_url": None,
                "view_only": True,
                "perms": {"view": True, "add": False, "change": False, "delete": False},
            }

        models = [
            entry("Live events", "LiveEvents", reverse("admin:live_events", current_app=self.name)),
        ]
        if request.user.has_perm("devices.view_devicegroup"):
            models.append(entry("Group tree", "GroupTree", reverse("admin:live_groups", current_app=self.name)))
        return {
            "name": "Live",
            "app_label": "fluxiot-live",
            "app_url": reverse("admin:live_events", current_app=self.name),
            "has_module_perms": True,
            "models": models,
        }

    def each_context(self, request: HttpRequest) -> dict[str, Any]:
        """Every admin page (the device page too) knows where the live events are, whether the
        alarms app exists and whether the user may see alarms."""
        return {
            **super().each_context(request),
            "live_ws_path": LIVE_WS_PATH,
            "alarms_installed": alarms_installed(),
            "may_view_alarms": may_view_alarms(request.user),
        }

    def _live_context(self, request: HttpRequest, title: str) -> dict[str, Any]:
        return {**self.each_context(request), "title": title}

    def index(self, request: HttpRequest, extra_context: dict[str, Any] | None = None) -> TemplateResponse:
        from devices.choices import DeviceStatus, DeviceType

        context = dict(extra_context or {})
        if request.user.has_perm(VIEW_DEVICES):
            summary = fleet_summary_for(request.user)
            counts = summary["by_status"]
            context["device_status_counts"] = [
                {"status": value, "label": label, "count": counts.get(value, 0)}
                for value, label in DeviceStatus.choices
            ]
            context["device_total"] = summary["total"]
            context["fleet"] = summary
            context["device_statuses"] = DeviceStatus.choices
            context["device_type_rows"] = [
                {
                    "type": value,
                    "label": label,
                    "total": summary["by_type"].get(value, {}).get("total", 0),
                    "cells": [
                        {"status": status, "count": summary["by_type"].get(value, {}).get(status, 0)}
                        for status in DeviceStatus.values
                    ],
                }
                for value, label in DeviceType.choices
            ]
            context["online_percent"] = (
                f"{summary['online_ratio'] * 100:.0f} %" if summary["online_ratio"] is not None else "–"
            )
            context["online_percent_width"] = round((summary["online_ratio"] or 0) * 100, 1)
            if "alarms" in summary:
                context["alarm_rows"] = [
                    {"severity": value, "label": label, "count": summary["alarms"].get(value, 0)}
                    for value, label in alarm_severities()
                ]
                context["alarm_total"] = summary["alarms"]["total"]
        return super().index(request, extra_context=context)

    def fleet_summary_view(self, request: HttpRequest) -> JsonResponse:
        """The dashboard's counts as JSON, for its live refresh (cached: see ``fleet_summary``); the
        active alarms per severity (``alarms``) only for users who may view alarms."""
        if not request.user.has_perm(VIEW_DEVICES):
            raise PermissionDenied
        return JsonResponse(fleet_summary_for(request.user))

    def live_events_view(self, request: HttpRequest) -> HttpResponse:
        """Every event the user may see, as it happens, with filters, pause and a bounded buffer."""
        from devices.models import DeviceGroup

        if not request.user.has_perm(VIEW_DEVICES):
            raise PermissionDenied
        groups = [
            {"id": group_id, "label": "\u2003" * max(group_path.count("/") - 2, 0) + name}
            for group_id, name, group_path in DeviceGroup.objects.order_by("path").values_list("id", "name", "path")
        ]
        offered = offered_event_types(request.user)
        chosen_types = [t for t in request.GET.getlist("type") if t in offered]
        severities = alarm_severities() if may_view_alarms(request.user) else []
        chosen_severity = request.GET.get("severity", "")
        context = {
            **self._live_context(request, "Live events"),
            "groups": groups,
            "event_types": [{"type": t, "checked": t in chosen_types} for t in offered],
            "initial_devices": request.GET.get("device", ""),
            "initial_group": request.GET.get("group", ""),
            "alarm_severities": [
                {"value": value, "label": label, "selected": value == chosen_severity} for value, label in severities
            ],
        }
        request.current_app = self.name
        return TemplateResponse(request, "admin/live/events.html", context)

    def group_tree_view(self, request: HttpRequest) -> HttpResponse:
        """The group hierarchy with device counts and online ratio per group (``?format=json``: the
        same numbers as JSON, for the page's live refresh)."""
        if not (request.user.has_perm(VIEW_DEVICES) and request.user.has_perm("devices.view_devicegroup")):
            raise PermissionDenied
        tree = group_tree()
        if request.GET.get("format") == "json":
            return JsonResponse(tree)
        context = {**self._live_context(request, "Group tree"), "tree": tree}
        request.current_app = self.name
        return TemplateResponse(request, "admin/live/groups.html", context)


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
