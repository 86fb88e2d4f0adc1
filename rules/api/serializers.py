from __future__ import annotations

import base64
import binascii
from typing import Any

from drf_spectacular.utils import extend_schema_field
from rest_framework import serializers

from rules.models import Plugin, Rule, RuleVersion
from rules.services import max_module_bytes

RULE_COUNTERS = ["evaluated", "matched", "failed", "last_matched_at", "last_error", "last_error_at"]
PLUGIN_COUNTERS = ["calls", "failures", "last_error", "last_error_at"]


class RuleSerializer(serializers.ModelSerializer):
    """A rule. Its condition, actions and scope are checked by the service when saved (400 with the
    compiler's or the action's message)."""

    actions = serializers.JSONField(
        required=False, help_text='The ordered actions: a list of {"type": …, "params": {…}} (see action-types).'
    )
    created_by = serializers.CharField(source="created_by.get_username", read_only=True, default=None)

    class Meta:
        model = Rule
        fields = [
            "id",
            "name",
            "description",
            "enabled",
            "priority",
            "scope",
            "scope_value",
            "trigger",
            "condition",
            "actions",
            "version",
            "created_by",
            "created_at",
            "updated_at",
            *RULE_COUNTERS,
        ]
        read_only_fields = ["version", "created_at", "updated_at", *RULE_COUNTERS]


class RuleVersionSerializer(serializers.ModelSerializer):
    changed_by = serializers.CharField(source="changed_by.get_username", read_only=True, default=None)
    snapshot = serializers.JSONField(read_only=True, help_text="The rule's fields as this version saved them.")

    class Meta:
        model = RuleVersion
        fields = ["version", "note", "changed_by", "changed_at", "snapshot"]


class SampleSerializer(serializers.Serializer):
    """A sample message (only its shape: the service checks the rest)."""

    device = serializers.JSONField(
        help_text="An existing device's id (its real type, tags, group, attributes and latest values are used), "
        "or an object with id, device_type, tags and group."
    )
    trigger = serializers.CharField(required=False, help_text="Default: the rule's trigger.")
    telemetry = serializers.DictField(required=False, help_text="The message's values, for a telemetry trigger.")
    attributes = serializers.DictField(required=False, help_text="Default: the device's stored attributes.")
    previous = serializers.DictField(required=False, help_text="Default: the device's latest stored values.")
    status = serializers.DictField(required=False, help_text='{"old", "new"}, for a status trigger.')
    command = serializers.DictField(
        required=False, help_text='{"id", "type", "status", "result", "error"}, for a command-result trigger.'
    )
    received = serializers.DateTimeField(required=False, help_text="The message's time (``now``); default: now.")


class RuleDraftTestSerializer(serializers.Serializer):
    """An unsaved rule and a sample message to try it on."""

    condition = serializers.CharField(allow_blank=True)
    trigger = serializers.CharField(required=False, default="telemetry")
    actions = serializers.JSONField(required=False, default=list)
    scope = serializers.CharField(required=False, default="all")
    scope_value = serializers.CharField(required=False, allow_blank=True, default="")
    sample = SampleSerializer()


class ActionOutcomeSerializer(serializers.Serializer):
    type = serializers.CharField()
    would = serializers.CharField(help_text="What the action would do.")
    error = serializers.CharField(required=False, help_text="Why it would fail.")


class RuleTestResultSerializer(serializers.Serializer):
    matched = serializers.BooleanField(allow_null=True, help_text="Null when the condition failed.")
    error = serializers.CharField(allow_null=True, help_text="Why the condition could not be evaluated.")
    skipped = serializers.CharField(
        allow_null=True, help_text="Why the rule would not run at all (another trigger, a device outside its scope)."
    )
    actions = ActionOutcomeSerializer(many=True, help_text="What would happen (only when it matched).")


class ActionTypeSerializer(serializers.Serializer):
    type = serializers.CharField()
    description = serializers.CharField()
    params_schema = serializers.JSONField()
    example = serializers.JSONField()


@extend_schema_field(
    {
        "type": "string",
        "format": "binary",
        "description": "The WebAssembly module: a file (multipart), or its bytes in base64 (JSON).",
    }
)
class ModuleField(serializers.Field):
    """A .wasm module: an uploaded file, or base64 text in a JSON body. Becomes bytes."""

    default_error_messages = {
        "invalid": "Upload a WebAssembly module: a file, or its bytes in base64.",
        "base64": "The module is not valid base64.",
        "too_large": "The module is {size} bytes, over the limit of {limit} bytes.",
    }

    def to_internal_value(self, data: Any) -> bytes:
        limit = max_module_bytes()
        if hasattr(data, "read"):
            size = getattr(data, "size", None)
            if size is not None and size > limit:
                self.fail("too_large", size=size, limit=limit)
            module = data.read(limit + 1)
        elif isinstance(data, str):
            try:
                module = base64.b64decode(data, validate=True)
            except (binascii.Error, ValueError):
                self.fail("base64")
        else:
            self.fail("invalid")
        if len(module) > limit:
            self.fail("too_large", size=f"more than {limit}" if hasattr(data, "read") else len(module), limit=limit)
        return module

    def to_representation(self, value: Any) -> Any:
        return None


class PluginSerializer(serializers.ModelSerializer):
    """A plugin; never its module's bytes (``plugins/{id}/module/`` downloads them)."""

    module = ModuleField(write_only=True, required=False)
    config = serializers.JSONField(required=False, help_text="A JSON object handed to the plugin with every call.")
    created_by = serializers.CharField(source="created_by.get_username", read_only=True, default=None)

    class Meta:
        model = Plugin
        fields = [
            "id",
            "name",
            "version",
            "description",
            "module",
            "sha256",
            "size",
            "stage",
            "config",
            "scope",
            "scope_value",
            "enabled",
            "on_failure",
            "created_by",
            "created_at",
            "updated_at",
            *PLUGIN_COUNTERS,
        ]
        read_only_fields = ["sha256", "size", "created_at", "updated_at", *PLUGIN_COUNTERS]
        # A second plugin of the same name and version is a conflict (409), told by the service.
        validators: list[Any] = []

    def validate(self, attrs: dict[str, Any]) -> dict[str, Any]:
        if self.instance is None and "module" not in attrs:
            raise serializers.ValidationError({"module": ["Upload the plugin's module (.wasm)."]})
        return attrs
