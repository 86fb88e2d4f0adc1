from __future__ import annotations

from typing import Any

from django.core.exceptions import ValidationError as DjangoValidationError
from rest_framework import serializers

from devices.choices import DeviceStatus
from devices.models import (
    Device,
    DeviceGroup,
    DeviceStatusChange,
    normalize_fingerprint,
    normalize_tags,
    validate_tags,
)
from fluxiot.api.serializers import CleanModelSerializer


class DeviceGroupSerializer(CleanModelSerializer):
    device_count = serializers.SerializerMethodField(help_text="Devices directly in this group.")

    class Meta:
        model = DeviceGroup
        fields = ["id", "name", "description", "parent", "path", "depth", "device_count", "created_at", "updated_at"]
        read_only_fields = ["path", "depth", "created_at", "updated_at"]
        # The tree's unique constraints are checked by the database; a readable message comes from
        # validate() below rather than DRF's generic one.
        validators: list[Any] = []

    def get_device_count(self, group: DeviceGroup) -> int:
        count = getattr(group, "device_count", None)  # annotated on lists
        return group.devices.count() if count is None else count

    def validate(self, attrs: dict[str, Any]) -> dict[str, Any]:
        attrs = super().validate(attrs)
        name = attrs.get("name", getattr(self.instance, "name", None))
        parent = attrs["parent"] if "parent" in attrs else getattr(self.instance, "parent", None)
        clash = DeviceGroup.objects.filter(name=name, parent=parent)
        if self.instance is not None:
            clash = clash.exclude(pk=self.instance.pk)
        if clash.exists():
            raise serializers.ValidationError({"name": ["A group with this name already exists under this parent."]})
        return attrs


class DeviceSerializer(CleanModelSerializer):
    group_name = serializers.CharField(source="group.name", read_only=True, default=None)
    tags = serializers.JSONField(required=False, help_text="A list of tag strings.")
    metadata = serializers.JSONField(required=False, help_text="A JSON object of user-set metadata.")

    class Meta:
        model = Device
        fields = [
            "id",
            "name",
            "device_type",
            "custom_type",
            "protocol",
            "status",
            "activation_state",
            "activated_at",
            "metadata",
            "attributes",
            "tags",
            "group",
            "group_name",
            "cert_fingerprint",
            "heartbeat_timeout",
            "last_seen_at",
            "created_at",
            "updated_at",
        ]
        read_only_fields = [
            "status",
            "activation_state",
            "activated_at",
            "attributes",
            "last_seen_at",
            "created_at",
            "updated_at",
        ]
        extra_kwargs = {"id": {"required": False}}

    def get_fields(self) -> dict[str, serializers.Field]:
        fields = super().get_fields()
        if self.instance is not None and not isinstance(self.instance, (list, tuple)) and hasattr(self.instance, "pk"):
            fields["id"].read_only = True  # a device's id never changes
        return fields

    def validate_tags(self, value: Any) -> Any:

        try:
            validate_tags(normalize_tags(value))
        except DjangoValidationError as exc:
            raise serializers.ValidationError(exc.messages) from exc
        return normalize_tags(value)

    def validate_cert_fingerprint(self, value: str) -> str:
        value = normalize_fingerprint(value or "")
        if value:
            clash = Device.objects.filter(cert_fingerprint=value)
            if self.instance is not None and hasattr(self.instance, "pk"):
                clash = clash.exclude(pk=self.instance.pk)
            if clash.exists():
                raise serializers.ValidationError("Another device has this certificate fingerprint.")
        return value

    def validate_metadata(self, value: Any) -> Any:
        if not isinstance(value, dict):
            raise serializers.ValidationError("Metadata must be a JSON object.")
        return value


class DeviceStatusChangeSerializer(serializers.ModelSerializer):
    changed_by = serializers.CharField(source="changed_by.get_username", read_only=True, default=None)

    class Meta:
        model = DeviceStatusChange
        fields = ["old_status", "new_status", "changed_at", "reason", "metadata", "changed_by"]


class DeviceStatusSerializer(serializers.Serializer):
    """The answer of ``devices/{id}/status/``: current status and recent history."""

    id = serializers.CharField()
    status = serializers.CharField()
    last_seen_at = serializers.DateTimeField(allow_null=True)
    history = DeviceStatusChangeSerializer(many=True)


class SetStatusSerializer(serializers.Serializer):
    status = serializers.ChoiceField(choices=DeviceStatus.choices)
    reason = serializers.CharField(max_length=200, required=False, allow_blank=True, default="")


class SecretSerializer(serializers.Serializer):
    id = serializers.CharField(help_text="The device id (the MQTT username).")
    secret = serializers.CharField(help_text="The device secret. Shown this once; only its hash is kept.")


class MoveDevicesSerializer(serializers.Serializer):
    devices = serializers.ListField(child=serializers.CharField(max_length=64), allow_empty=False, max_length=10_000)


class ImportRequestSerializer(serializers.Serializer):
    file = serializers.FileField(help_text="A CSV or JSON file (see docs/API.md for the columns).")


class ImportResultSerializer(serializers.Serializer):
    created = serializers.IntegerField()
    ids = serializers.ListField(child=serializers.CharField())


class ImportErrorSerializer(serializers.Serializer):
    detail = serializers.CharField()
    errors = serializers.ListField(child=serializers.DictField(), required=False)
