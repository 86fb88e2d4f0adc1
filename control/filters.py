"""Filter sets of commands and batches, shared by the API and the admin."""

from __future__ import annotations

from django_filters import rest_framework as filters

from control.choices import CommandStatus, CommandType
from control.models import CommandBatch, DeviceCommand


class DeviceCommandFilterSet(filters.FilterSet):
    status = filters.MultipleChoiceFilter(choices=CommandStatus.choices, distinct=False)
    type = filters.MultipleChoiceFilter(field_name="command_type", choices=CommandType.choices, distinct=False)
    device = filters.CharFilter(field_name="device_id")
    batch = filters.UUIDFilter(field_name="batch_id")
    created_after = filters.IsoDateTimeFilter(field_name="created_at", lookup_expr="gte")
    created_before = filters.IsoDateTimeFilter(field_name="created_at", lookup_expr="lt")

    class Meta:
        model = DeviceCommand
        fields = ["status", "type", "device", "batch", "created_after", "created_before"]


class CommandBatchFilterSet(filters.FilterSet):
    type = filters.MultipleChoiceFilter(field_name="command_type", choices=CommandType.choices, distinct=False)
    created_after = filters.IsoDateTimeFilter(field_name="created_at", lookup_expr="gte")
    created_before = filters.IsoDateTimeFilter(field_name="created_at", lookup_expr="lt")

    class Meta:
        model = CommandBatch
        fields = ["type", "created_after", "created_before"]
