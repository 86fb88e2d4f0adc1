from __future__ import annotations

from typing import Any

from rest_framework import serializers

from control import services
from control.choices import CommandType
from control.models import CommandBatch, CommandReply, DeviceCommand


class CommandReplySerializer(serializers.ModelSerializer):
    class Meta:
        model = CommandReply
        fields = ["status", "result", "error", "received_at", "applied"]


class DeviceCommandSerializer(serializers.ModelSerializer):
    type = serializers.CharField(source="command_type", read_only=True)
    device = serializers.CharField(source="device_id", read_only=True)
    created_by = serializers.CharField(source="created_by.username", read_only=True, default=None)

    class Meta:
        model = DeviceCommand
        fields = [
            "id",
            "device",
            "type",
            "params",
            "status",
            "result",
            "error",
            "timeout",
            "expires_at",
            "batch",
            "created_by",
            "created_at",
            "sent_at",
            "delivered_at",
            "deadline_at",
            "completed_at",
        ]
        read_only_fields = fields


class DeviceCommandDetailSerializer(DeviceCommandSerializer):
    replies = CommandReplySerializer(many=True, read_only=True)

    class Meta(DeviceCommandSerializer.Meta):
        fields = [*DeviceCommandSerializer.Meta.fields, "replies"]
        read_only_fields = fields


class SendCommandSerializer(serializers.Serializer):
    type = serializers.ChoiceField(choices=CommandType.choices)
    params = serializers.JSONField(required=False, default=dict, help_text="Checked against the type's schema.")
    timeout = serializers.IntegerField(
        required=False, help_text="Seconds for a final reply once sent (COMMAND_DEFAULT_TIMEOUT when absent)."
    )
    expires_at = serializers.DateTimeField(
        required=False, help_text="Not delivered by then (device offline): expired (COMMAND_DEFAULT_EXPIRY)."
    )

    def validate_params(self, value: Any) -> Any:
        if not isinstance(value, dict):
            raise serializers.ValidationError("params is a JSON object.")
        return value


class TargetsSerializer(serializers.Serializer):
    """Exactly one of devices, group or tags."""

    devices = serializers.ListField(child=serializers.CharField(), required=False, help_text="Device ids.")
    group = serializers.IntegerField(required=False, help_text="A device group id.")
    include_descendants = serializers.BooleanField(required=False, default=True)
    tags = serializers.ListField(child=serializers.CharField(), required=False)
    match = serializers.ChoiceField(choices=["any", "all"], required=False, default="any")


class SendBatchSerializer(SendCommandSerializer):
    targets = TargetsSerializer()

    def validate_targets(self, value: dict[str, Any]) -> dict[str, Any]:
        given = [key for key in ("devices", "group", "tags") if value.get(key) not in (None, [])]
        if len(given) != 1:
            raise serializers.ValidationError("Give exactly one of devices (ids), group or tags.")
        key = given[0]
        targets: dict[str, Any] = {key: value[key]}
        if key == "group":
            targets["include_descendants"] = value.get("include_descendants", True)
        if key == "tags":
            targets["match"] = value.get("match", "any")
        return targets


class CommandBatchSerializer(serializers.ModelSerializer):
    type = serializers.CharField(source="command_type", read_only=True)
    created_by = serializers.CharField(source="created_by.username", read_only=True, default=None)
    counts = serializers.SerializerMethodField(help_text="Commands of the batch per status.")
    finished = serializers.SerializerMethodField(help_text="Commands in a terminal state.")

    class Meta:
        model = CommandBatch
        fields = [
            "id",
            "type",
            "params",
            "targets",
            "total",
            "skipped",
            "timeout",
            "expires_at",
            "created_by",
            "created_at",
            "counts",
            "finished",
        ]
        read_only_fields = fields

    def _counts(self, batch: CommandBatch) -> dict[str, int]:
        cache = self.context.setdefault("_counts", {})
        if batch.pk not in cache:
            cache[batch.pk] = services.batch_counts(batch)
        return cache[batch.pk]

    def get_counts(self, batch: CommandBatch) -> dict[str, int]:
        return self._counts(batch)

    def get_finished(self, batch: CommandBatch) -> int:
        from control.choices import TERMINAL

        return sum(n for status, n in self._counts(batch).items() if status in TERMINAL)


class CommandTypeSerializer(serializers.Serializer):
    type = serializers.CharField()
    label = serializers.CharField()
    description = serializers.CharField()
    params_schema = serializers.JSONField()
    example = serializers.JSONField()
    device_types = serializers.ListField(child=serializers.CharField())
