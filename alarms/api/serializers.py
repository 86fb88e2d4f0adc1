from __future__ import annotations

from typing import Any

from django.contrib.auth import get_user_model
from django.contrib.auth.models import Group
from rest_framework import serializers

from alarms.choices import AlarmSeverity, NotifyOn
from alarms.models import (
    SECRET_MAX_LENGTH,
    Alarm,
    NotificationChannel,
    NotificationDelivery,
    NotificationRule,
)


class AlarmSerializer(serializers.ModelSerializer):
    device_name = serializers.CharField(source="device.name", read_only=True)
    group = serializers.IntegerField(source="device.group_id", read_only=True, allow_null=True)
    active = serializers.BooleanField(read_only=True)
    acknowledged = serializers.BooleanField(read_only=True)
    raised_by = serializers.CharField(source="raised_by.get_username", read_only=True, default=None)
    acknowledged_by = serializers.CharField(source="acknowledged_by.get_username", read_only=True, default=None)
    cleared_by = serializers.CharField(source="cleared_by.get_username", read_only=True, default=None)

    class Meta:
        model = Alarm
        fields = [
            "id",
            "device",
            "device_name",
            "group",
            "type",
            "severity",
            "status",
            "active",
            "acknowledged",
            "started_at",
            "last_raised_at",
            "ended_at",
            "count",
            "details",
            "source",
            "raised_by",
            "acknowledged_at",
            "acknowledged_by",
            "cleared_by",
            "clear_reason",
        ]
        read_only_fields = fields


class RaiseAlarmSerializer(serializers.Serializer):
    """A raise by hand: the device's active alarm of this type is raised again if there is one."""

    device = serializers.CharField(max_length=64)
    type = serializers.CharField(max_length=64)
    severity = serializers.ChoiceField(choices=AlarmSeverity.choices)
    details = serializers.JSONField(required=False, default=dict, help_text="A JSON object.")

    def validate_details(self, value: Any) -> Any:
        if not isinstance(value, dict):
            raise serializers.ValidationError("A JSON object.")
        return value


class ClearAlarmSerializer(serializers.Serializer):
    reason = serializers.CharField(required=False, allow_blank=True, max_length=200, default="")


class NotificationChannelSerializer(serializers.ModelSerializer):
    """A channel. ``secret`` is write-only: required for a new webhook, kept when left out of an
    update."""

    secret = serializers.CharField(
        write_only=True,
        required=False,
        allow_blank=True,
        max_length=SECRET_MAX_LENGTH,
        style={"input_type": "password"},
        help_text="Webhook: the HMAC-SHA256 key (at least 16 characters). Never shown again.",
    )
    has_secret = serializers.SerializerMethodField(help_text="Whether a secret is set.")
    email_addresses = serializers.ListField(child=serializers.CharField(max_length=254), required=False)
    users = serializers.PrimaryKeyRelatedField(many=True, required=False, queryset=get_user_model().objects.all())
    groups = serializers.PrimaryKeyRelatedField(many=True, required=False, queryset=Group.objects.all())

    class Meta:
        model = NotificationChannel
        fields = [
            "id",
            "name",
            "kind",
            "enabled",
            "email_addresses",
            "users",
            "groups",
            "url",
            "secret",
            "has_secret",
            "timeout",
            "max_attempts",
            "created_at",
            "updated_at",
        ]
        read_only_fields = ["created_at", "updated_at"]

    def get_has_secret(self, channel: NotificationChannel) -> bool:
        return bool(channel.secret)


class NotificationRuleSerializer(serializers.ModelSerializer):
    alarm_types = serializers.ListField(
        child=serializers.CharField(max_length=64), required=False, help_text="Empty: every type."
    )
    transitions = serializers.ListField(child=serializers.ChoiceField(choices=NotifyOn.choices), required=False)
    channels = serializers.PrimaryKeyRelatedField(many=True, queryset=NotificationChannel.objects.all())

    class Meta:
        model = NotificationRule
        fields = [
            "id",
            "name",
            "enabled",
            "alarm_types",
            "min_severity",
            "group",
            "transitions",
            "channels",
            "created_at",
            "updated_at",
        ]
        read_only_fields = ["created_at", "updated_at"]


class NotificationDeliverySerializer(serializers.ModelSerializer):
    class Meta:
        model = NotificationDelivery
        fields = [
            "id",
            "channel",
            "kind",
            "target",
            "alarm",
            "reason",
            "payload",
            "status",
            "attempts",
            "response_code",
            "last_error",
            "created_at",
            "next_attempt_at",
            "sent_at",
        ]
        read_only_fields = fields
