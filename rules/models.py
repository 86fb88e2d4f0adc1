"""Rules (a CEL condition and actions, judged against incoming messages), their versions, and Wasm
plugins (sandboxed decoders and transforms)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from django.conf import settings
from django.core.exceptions import ValidationError
from django.db import models

from devices.choices import DeviceType
from rules.choices import PluginFailure, PluginStage, Scope, Trigger


@dataclass(frozen=True)
class DeviceFacts:
    """What scoping needs to know of a device (loaded once per ingest batch)."""

    id: str
    device_type: str
    tags: tuple[str, ...]
    group_path: str  # "" when the device is in no group


class Scoped(models.Model):
    """A scope: all devices, one device, a group with the groups below it, a device type or a tag."""

    scope = models.CharField(max_length=16, choices=Scope.choices, default=Scope.ALL)
    scope_value = models.CharField(
        max_length=128,
        blank=True,
        help_text="The device id, group id, device type or tag the scope names (empty for all devices).",
    )

    class Meta:
        abstract = True

    def clean_scope(self) -> None:
        from devices.models import Device, DeviceGroup

        value = (self.scope_value or "").strip()
        self.scope_value = value
        if self.scope == Scope.ALL:
            if value:
                raise ValidationError({"scope_value": "Leave empty for all devices."})
            return
        if not value:
            raise ValidationError({"scope_value": f"Name the {Scope(self.scope).label.lower()} this applies to."})
        if self.scope == Scope.DEVICE and not Device.objects.filter(pk=value).exists():
            raise ValidationError({"scope_value": f"No device {value!r}."})
        if self.scope == Scope.GROUP and not (value.isdigit() and DeviceGroup.objects.filter(pk=int(value)).exists()):
            raise ValidationError({"scope_value": f"No device group with id {value!r}."})
        if self.scope == Scope.DEVICE_TYPE and value not in DeviceType.values:
            raise ValidationError({"scope_value": f"Unknown device type {value!r} ({', '.join(DeviceType.values)})."})

    def group_path(self) -> str | None:
        """For a group scope, the group's materialised path (None if it is gone)."""
        from devices.models import DeviceGroup

        if self.scope != Scope.GROUP or not self.scope_value.isdigit():
            return None
        return DeviceGroup.objects.filter(pk=int(self.scope_value)).values_list("path", flat=True).first()


def scope_matches(scope: str, value: str, group_path: str | None, device: DeviceFacts) -> bool:
    """Whether a device is within a scope (``group_path``: the scope group's path, resolved once)."""
    if scope == Scope.ALL:
        return True
    if scope == Scope.DEVICE:
        return device.id == value
    if scope == Scope.DEVICE_TYPE:
        return device.device_type == value
    if scope == Scope.TAG:
        return value in device.tags
    if scope == Scope.GROUP:
        return bool(group_path) and device.group_path.startswith(group_path)
    return False


class Rule(Scoped):
    """A CEL condition over each incoming message of its trigger and scope, and the actions to run
    when it holds."""

    name = models.CharField(max_length=128, unique=True)
    description = models.TextField(blank=True)
    enabled = models.BooleanField(default=True)
    priority = models.IntegerField(default=100, help_text="Lower runs first.")
    trigger = models.CharField(max_length=16, choices=Trigger.choices, default=Trigger.TELEMETRY)
    condition = models.TextField(
        help_text="CEL over device, telemetry, attributes, previous, status, command and now, e.g. "
        '<code>telemetry.temperature &gt; 30.0 &amp;&amp; "lab" in device.tags</code>.'
    )
    actions = models.JSONField(default=list, blank=True, help_text='A list of {"type": …, "params": {…}}.')
    version = models.PositiveIntegerField(default=1, editable=False)
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)
    # Counters, updated by the engine once per batch.
    evaluated = models.BigIntegerField(default=0, editable=False)
    matched = models.BigIntegerField(default=0, editable=False)
    failed = models.BigIntegerField(default=0, editable=False)
    last_matched_at = models.DateTimeField(null=True, blank=True, editable=False)
    last_error = models.TextField(blank=True, editable=False)
    last_error_at = models.DateTimeField(null=True, blank=True, editable=False)

    class Meta:
        ordering = ["priority", "name"]
        permissions = [("test_rule", "Can test rules against sample messages")]

    def __str__(self) -> str:
        return self.name

    # The fields a version keeps (and a restore brings back).
    VERSIONED_FIELDS = (
        "name",
        "description",
        "enabled",
        "priority",
        "scope",
        "scope_value",
        "trigger",
        "condition",
        "actions",
    )

    def snapshot(self) -> dict[str, Any]:
        return {field: getattr(self, field) for field in self.VERSIONED_FIELDS}


class RuleVersion(models.Model):
    """A rule as it was saved: who, when, what."""

    rule = models.ForeignKey(Rule, on_delete=models.CASCADE, related_name="versions")
    version = models.PositiveIntegerField()
    snapshot = models.JSONField()
    changed_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    changed_at = models.DateTimeField(auto_now_add=True)
    note = models.CharField(max_length=200, blank=True, help_text="created, updated, restored from version N")

    class Meta:
        ordering = ["rule", "-version"]
        constraints = [models.UniqueConstraint(fields=["rule", "version"], name="rule_version_unique")]

    def __str__(self) -> str:
        return f"{self.rule_id} v{self.version}"


class Plugin(Scoped):
    """A WebAssembly module of the plugin ABI (docs/PLUGIN_DEV.md)."""

    name = models.CharField(max_length=64)
    version = models.CharField(max_length=32, default="1.0.0")
    description = models.TextField(blank=True)
    module = models.BinaryField(editable=False)
    sha256 = models.CharField(max_length=64, editable=False)
    size = models.PositiveIntegerField(editable=False, default=0)
    stage = models.CharField(max_length=16, choices=PluginStage.choices, default=PluginStage.PREPROCESS)
    config = models.JSONField(default=dict, blank=True, help_text="Handed to the plugin with every call.")
    enabled = models.BooleanField(default=True)
    on_failure = models.CharField(max_length=16, choices=PluginFailure.choices, default=PluginFailure.PASS)
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)
    calls = models.BigIntegerField(default=0, editable=False)
    failures = models.BigIntegerField(default=0, editable=False)
    last_error = models.TextField(blank=True, editable=False)
    last_error_at = models.DateTimeField(null=True, blank=True, editable=False)

    class Meta:
        ordering = ["name", "-created_at"]
        constraints = [models.UniqueConstraint(fields=["name", "version"], name="plugin_name_version_unique")]

    def __str__(self) -> str:
        return f"{self.name} {self.version}"
