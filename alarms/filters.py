"""Filter sets of alarms and deliveries (the API's)."""

from __future__ import annotations

from django.db.models import QuerySet
from django_filters import rest_framework as filters

from alarms.choices import ACTIVE_STATUSES, AlarmSeverity, AlarmStatus, ChannelKind, DeliveryReason, DeliveryStatus
from alarms.models import Alarm, NotificationDelivery
from devices.models import DeviceGroup


def subtree_ids(group: DeviceGroup) -> list[int]:
    """The ids of a group and every group below it (literals: see devices.filters)."""
    return list(DeviceGroup.objects.filter(path__startswith=group.path).values_list("pk", flat=True))


class AlarmFilterSet(filters.FilterSet):
    severity = filters.MultipleChoiceFilter(choices=AlarmSeverity.choices, distinct=False)
    status = filters.MultipleChoiceFilter(choices=AlarmStatus.choices, distinct=False)
    active = filters.BooleanFilter(method="filter_active", label="Active (true) or cleared (false)")
    acknowledged = filters.BooleanFilter(method="filter_acknowledged", label="Acknowledged or not")
    device = filters.CharFilter(field_name="device_id")
    group = filters.ModelChoiceFilter(
        queryset=DeviceGroup.objects.all(), method="filter_group", label="Devices of this group or any group below it"
    )
    type = filters.CharFilter(field_name="type")
    started_after = filters.IsoDateTimeFilter(field_name="started_at", lookup_expr="gte")
    started_before = filters.IsoDateTimeFilter(field_name="started_at", lookup_expr="lt")

    class Meta:
        model = Alarm
        fields = ["severity", "status", "active", "acknowledged", "device", "group", "type"]

    def filter_active(self, qs: QuerySet, name: str, value: bool | None) -> QuerySet:
        if value is None:
            return qs
        return qs.filter(status__in=ACTIVE_STATUSES) if value else qs.exclude(status__in=ACTIVE_STATUSES)

    def filter_acknowledged(self, qs: QuerySet, name: str, value: bool | None) -> QuerySet:
        if value is None:
            return qs
        acked = [AlarmStatus.ACTIVE_ACKNOWLEDGED, AlarmStatus.CLEARED_ACKNOWLEDGED]
        return qs.filter(status__in=acked) if value else qs.exclude(status__in=acked)

    def filter_group(self, qs: QuerySet, name: str, value: DeviceGroup | None) -> QuerySet:
        return qs if value is None else qs.filter(device__group__in=subtree_ids(value))


class NotificationDeliveryFilterSet(filters.FilterSet):
    status = filters.MultipleChoiceFilter(choices=DeliveryStatus.choices, distinct=False)
    kind = filters.ChoiceFilter(choices=ChannelKind.choices)
    reason = filters.MultipleChoiceFilter(choices=DeliveryReason.choices, distinct=False)
    channel = filters.NumberFilter(field_name="channel_id")
    alarm = filters.NumberFilter(field_name="alarm_id")
    created_after = filters.IsoDateTimeFilter(field_name="created_at", lookup_expr="gte")
    created_before = filters.IsoDateTimeFilter(field_name="created_at", lookup_expr="lt")

    class Meta:
        model = NotificationDelivery
        fields = ["status", "kind", "reason", "channel", "alarm"]
