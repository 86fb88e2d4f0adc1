"""Device commands, the batches that send one command to many devices, and every reply received."""

from __future__ import annotations

import uuid

from django.conf import settings
from django.db import models

from control.choices import TERMINAL, CommandStatus, CommandType


class CommandBatch(models.Model):
    """One command sent to a selection of devices (a list, a group with its descendants, or tags)."""

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    command_type = models.CharField("type", max_length=32, choices=CommandType.choices)
    params = models.JSONField(default=dict, blank=True)
    targets = models.JSONField(default=dict, help_text="The selection as it was asked for.")
    total = models.PositiveIntegerField(default=0, help_text="Commands created (one per targeted device).")
    skipped = models.JSONField(
        default=dict, blank=True, help_text="Devices of the selection left out, counted by reason."
    )
    timeout = models.PositiveIntegerField(help_text="Seconds each command may take once sent.")
    expires_at = models.DateTimeField(null=True, blank=True)
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    created_at = models.DateTimeField(auto_now_add=True, db_index=True)

    class Meta:
        ordering = ["-created_at"]
        verbose_name_plural = "command batches"

    def __str__(self) -> str:
        return f"{self.command_type} to {self.total} devices"


class DeviceCommand(models.Model):
    """One command to one device, and everything that happened to it."""

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    device = models.ForeignKey("devices.Device", on_delete=models.CASCADE, related_name="commands")
    batch = models.ForeignKey(CommandBatch, null=True, blank=True, on_delete=models.SET_NULL, related_name="commands")
    command_type = models.CharField("type", max_length=32, choices=CommandType.choices)
    params = models.JSONField(default=dict, blank=True)
    timeout = models.PositiveIntegerField(help_text="Seconds the device has for a final reply once it is sent.")
    expires_at = models.DateTimeField(
        null=True, blank=True, help_text="Not delivered by then (device offline): expired, never sent."
    )
    status = models.CharField(max_length=16, choices=CommandStatus.choices, default=CommandStatus.PENDING)
    result = models.JSONField(null=True, blank=True)
    error = models.TextField(blank=True)
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    created_at = models.DateTimeField(auto_now_add=True, db_index=True)
    sent_at = models.DateTimeField(null=True, blank=True, help_text="The broker accepted it (QoS 1).")
    deadline_at = models.DateTimeField(null=True, blank=True, help_text="Sent, a final reply is due by then.")
    delivered_at = models.DateTimeField(null=True, blank=True, help_text="The device's first reply came.")
    completed_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at"]
        permissions = [("send_command", "Can send commands to devices")]
        indexes = [
            models.Index(fields=["device", "status", "created_at"], name="command_device_status"),
            models.Index(fields=["status", "deadline_at"], name="command_status_deadline"),
            models.Index(fields=["status", "expires_at"], name="command_status_expiry"),
            models.Index(fields=["batch", "status"], name="command_batch_status"),
        ]

    def __str__(self) -> str:
        return f"{self.command_type} → {self.device_id} ({self.status})"

    @property
    def is_terminal(self) -> bool:
        return self.status in TERMINAL

    @property
    def topic(self) -> str:
        return f"devices/{self.device_id}/commands/{self.id}"


class CommandReply(models.Model):
    """A reply a device sent for a command: kept even when it changed nothing (late or repeated)."""

    id = models.BigAutoField(primary_key=True)
    command = models.ForeignKey(DeviceCommand, on_delete=models.CASCADE, related_name="replies")
    status = models.CharField(max_length=16, choices=CommandStatus.choices)
    result = models.JSONField(null=True, blank=True)
    error = models.TextField(blank=True)
    received_at = models.DateTimeField()
    applied = models.BooleanField(help_text="Whether it changed the command's status.")

    class Meta:
        ordering = ["received_at", "id"]
        verbose_name_plural = "command replies"

    def __str__(self) -> str:
        return f"{self.status} for {self.command_id}"


from control.scenes.models import Scene, SceneExecution  # noqa: E402,F401
