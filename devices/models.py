"""The device registry: devices, the group tree, status history and credentials."""

from __future__ import annotations

import re
import secrets
from typing import Any

from django.conf import settings
from django.core.exceptions import ValidationError
from django.core.validators import RegexValidator
from django.db import models, transaction
from django.db.models import Q, Value
from django.db.models.functions import Concat, Substr

from devices.choices import ActivationState, DeviceStatus, DeviceType, Protocol
from devices.fields import TagsField

DEVICE_ID_MAX_LENGTH = 64
MAX_TAGS = 50
TAG_MAX_LENGTH = 64
# Ids the API itself uses under devices/ (devices/batch/commands/, devices/import/).
RESERVED_IDS = frozenset({"batch", "import"})
_TAG_FORBIDDEN = re.compile(r"[,;\s]")
_FINGERPRINT_RE = re.compile(r"^[0-9a-f]{64}$")

validate_device_id = RegexValidator(
    r"^[A-Za-z0-9][A-Za-z0-9_-]*\Z",
    "A device id is a slug: letters, digits, hyphens and underscores, starting with a letter or digit.",
    code="invalid_device_id",
)


def generate_device_id() -> str:
    """A random id for devices created without one (64 random bits)."""
    return f"dev-{secrets.token_hex(8)}"


def validate_metadata(value: Any) -> None:
    if not isinstance(value, dict):
        raise ValidationError("Metadata must be a JSON object.", code="invalid_metadata")


def validate_tags(value: Any) -> None:
    if not isinstance(value, list) or not all(isinstance(tag, str) for tag in value):
        raise ValidationError("Tags must be a list of strings.", code="invalid_tags")
    if len(value) > MAX_TAGS:
        raise ValidationError(f"At most {MAX_TAGS} tags.", code="too_many_tags")
    for tag in value:
        if not tag or len(tag) > TAG_MAX_LENGTH or _TAG_FORBIDDEN.search(tag):
            raise ValidationError(
                f"Bad tag {tag!r}: 1 to {TAG_MAX_LENGTH} characters, no spaces, commas or semicolons.",
                code="invalid_tag",
            )


def normalize_tags(value: Any) -> Any:
    """Strip and de-duplicate tags, keeping their order; anything not a list of strings is left for
    the validator to refuse."""
    if isinstance(value, list) and all(isinstance(tag, str) for tag in value):
        return list(dict.fromkeys(tag.strip() for tag in value))
    return value


def normalize_fingerprint(value: str) -> str:
    """``AB:CD:…`` or ``abcd…`` → lowercase hex without separators."""
    return value.replace(":", "").replace(" ", "").lower()


def validate_fingerprint(value: str) -> None:
    if value and not _FINGERPRINT_RE.match(normalize_fingerprint(value)):
        raise ValidationError(
            "A certificate fingerprint is a SHA-256 digest: 64 hex digits.", code="invalid_fingerprint"
        )


class DeviceGroup(models.Model):
    """A node of the group tree. ``path`` (``/1/5/12/``) is kept by ``save()`` so that a group's
    descendants are one indexed prefix query."""

    name = models.CharField(max_length=100)
    description = models.TextField(blank=True)
    parent = models.ForeignKey("self", null=True, blank=True, on_delete=models.PROTECT, related_name="children")
    path = models.CharField(max_length=1024, editable=False, default="")
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["path"]
        indexes = [models.Index(fields=["path"], name="devicegroup_path_idx", opclasses=["varchar_pattern_ops"])]
        constraints = [
            models.UniqueConstraint(
                fields=["parent", "name"],
                name="devicegroup_unique_name_in_parent",
                violation_error_message="A group with this name already exists under this parent.",
            ),
            models.UniqueConstraint(
                fields=["name"],
                condition=Q(parent__isnull=True),
                name="devicegroup_unique_root_name",
                violation_error_message="A top-level group with this name already exists.",
            ),
        ]

    def __str__(self) -> str:
        return self.name

    def save(self, *args: Any, **kwargs: Any) -> None:
        with transaction.atomic():
            old_path = ""
            if self.pk:
                old_path = (
                    DeviceGroup.objects.select_for_update().filter(pk=self.pk).values_list("path", flat=True).first()
                    or ""
                )
            parent_path = "/"
            if self.parent_id:
                parent_path = (
                    DeviceGroup.objects.select_for_update().values_list("path", flat=True).get(pk=self.parent_id)
                )
                if old_path and parent_path.startswith(old_path):
                    raise ValidationError({"parent": "A group cannot be moved under itself or its descendants."})
            super().save(*args, **kwargs)
            new_path = f"{parent_path}{self.pk}/"
            if new_path != old_path:
                self.path = new_path
                DeviceGroup.objects.filter(pk=self.pk).update(path=new_path)
                if old_path:
                    DeviceGroup.objects.filter(path__startswith=old_path).exclude(pk=self.pk).update(
                        path=Concat(Value(new_path), Substr("path", len(old_path) + 1))
                    )

    def clean(self) -> None:
        super().clean()
        if self.pk and self.parent_id:
            if self.parent_id == self.pk:
                raise ValidationError({"parent": "A group cannot be its own parent."}, code="cycle")
            parent_path = DeviceGroup.objects.filter(pk=self.parent_id).values_list("path", flat=True).first()
            if parent_path and self.path and parent_path.startswith(self.path):
                raise ValidationError(
                    {"parent": "A group cannot be moved under one of its own descendants."}, code="cycle"
                )

    @property
    def depth(self) -> int:
        return self.path.count("/") - 1 if self.path else 0

    def descendants(self, include_self: bool = True) -> models.QuerySet[DeviceGroup]:
        qs = DeviceGroup.objects.filter(path__startswith=self.path)
        return qs if include_self else qs.exclude(pk=self.pk)

    def is_ancestor_of(self, other: DeviceGroup) -> bool:
        return bool(self.path) and other.path.startswith(self.path)


class Device(models.Model):
    id = models.CharField(
        primary_key=True,
        max_length=DEVICE_ID_MAX_LENGTH,
        validators=[validate_device_id],
        default=generate_device_id,
        help_text="A slug of at most 64 characters; generated when not given.",
    )
    name = models.CharField(max_length=200)
    device_type = models.CharField(max_length=20, choices=DeviceType, default=DeviceType.SENSOR)
    custom_type = models.CharField(
        max_length=64, blank=True, help_text="The type's own name; required when the device type is custom."
    )
    protocol = models.CharField(max_length=10, choices=Protocol, default=Protocol.MQTT)
    status = models.CharField(max_length=12, choices=DeviceStatus, default=DeviceStatus.OFFLINE)
    activation_state = models.CharField(max_length=12, choices=ActivationState, default=ActivationState.REGISTERED)
    activated_at = models.DateTimeField(null=True, blank=True)
    metadata = models.JSONField(default=dict, blank=True, validators=[validate_metadata])
    attributes = models.JSONField(
        default=dict, blank=True, editable=False, help_text="Client attributes the device reported (firmware, model…)."
    )
    heartbeat_timeout = models.PositiveIntegerField(
        null=True,
        blank=True,
        help_text="Seconds of silence after which the device is marked offline (empty: the platform default).",
    )
    tags = TagsField(default=list, blank=True, validators=[validate_tags])
    group = models.ForeignKey(DeviceGroup, null=True, blank=True, on_delete=models.PROTECT, related_name="devices")
    cert_fingerprint = models.CharField(
        "certificate fingerprint",
        max_length=95,
        blank=True,
        validators=[validate_fingerprint],
        help_text="SHA-256 fingerprint of the device's X.509 certificate (optional).",
    )
    last_seen_at = models.DateTimeField(null=True, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["id"]
        permissions = [("activate_device", "Can activate and disable devices and rotate their credentials")]
        indexes = [
            models.Index(fields=["status"], name="device_status_idx"),
            models.Index(fields=["device_type"], name="device_type_idx"),
            models.Index(fields=["created_at"], name="device_created_idx"),
            models.Index(fields=["last_seen_at"], name="device_last_seen_idx"),
        ]
        constraints = [
            models.UniqueConstraint(
                fields=["cert_fingerprint"],
                condition=~Q(cert_fingerprint=""),
                name="device_unique_cert_fingerprint",
                violation_error_message="Another device has this certificate fingerprint.",
            ),
        ]

    def __str__(self) -> str:
        return self.id

    @property
    def type_label(self) -> str:
        return self.custom_type if self.device_type == DeviceType.CUSTOM else self.get_device_type_display()

    def normalize(self) -> None:
        """Tidy user input in place: strip and de-duplicate tags, canonical fingerprint."""
        self.tags = normalize_tags(self.tags)
        self.cert_fingerprint = normalize_fingerprint(self.cert_fingerprint or "")
        self.custom_type = (self.custom_type or "").strip()

    def clean_fields(self, exclude: Any = None) -> None:
        self.normalize()  # before the field validators look at the values
        super().clean_fields(exclude=exclude)

    def clean(self) -> None:
        super().clean()
        self.normalize()
        if self.id in (settings.MQTT_BRIDGE_USERNAME, settings.MQTT_DYNSEC_USERNAME):
            # The broker accounts of the platform itself: a device of that name could log in as them.
            raise ValidationError({"id": f"{self.id!r} is reserved for the platform's broker accounts."})
        if self.id in RESERVED_IDS:
            raise ValidationError({"id": f"{self.id!r} is reserved: the API uses devices/{self.id}/ itself."})
        # Field validators skip "empty" values, and [] or {} count as empty: check the shapes here.
        if not isinstance(self.metadata, dict):
            raise ValidationError({"metadata": "Metadata must be a JSON object."}, code="invalid_metadata")
        if not isinstance(self.tags, list):
            raise ValidationError({"tags": "Tags must be a list of strings."}, code="invalid_tags")
        if self.device_type == DeviceType.CUSTOM and not self.custom_type:
            raise ValidationError({"custom_type": "A custom device type needs its own name."}, code="required")
        if self.device_type != DeviceType.CUSTOM and self.custom_type:
            raise ValidationError(
                {"custom_type": "Only a device of type custom has a custom type name."}, code="invalid"
            )


class DeviceStatusChange(models.Model):
    """One row per status change, written by ``devices.services.set_status`` only."""

    device = models.ForeignKey(Device, on_delete=models.CASCADE, related_name="status_changes")
    old_status = models.CharField(max_length=12, choices=DeviceStatus)
    new_status = models.CharField(max_length=12, choices=DeviceStatus)
    changed_at = models.DateTimeField()
    reason = models.CharField(max_length=200, blank=True)
    metadata = models.JSONField(default=dict, blank=True)
    changed_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )

    class Meta:
        ordering = ["-changed_at", "-id"]
        indexes = [models.Index(fields=["device", "-changed_at"], name="statuschange_device_time_idx")]

    def __str__(self) -> str:
        return f"{self.device_id}: {self.old_status} → {self.new_status}"


class DeviceCredential(models.Model):
    """A device's secret, kept only as a SHA-256 digest. The secret is 256 random bits, so a fast
    digest is as safe as a slow password hash and lets the broker check thousands per second."""

    device = models.OneToOneField(Device, primary_key=True, on_delete=models.CASCADE, related_name="credential")
    secret_hash = models.CharField(max_length=64)
    # The same secret hashed the way Mosquitto's dynamic security plugin stores passwords
    # (PBKDF2-SHA512), so `sync_broker` can rebuild the broker's accounts without knowing secrets.
    broker_salt = models.CharField(max_length=32, blank=True)
    broker_hash = models.CharField(max_length=100, blank=True)
    issued_at = models.DateTimeField()

    class Meta:
        verbose_name = "device credential"

    def __str__(self) -> str:
        return f"credential of {self.device_id}"
