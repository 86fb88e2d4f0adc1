"""Demo data for the embedded mode: a superuser (credentials printed) and devices in a group tree."""

from __future__ import annotations

import secrets
from typing import Any

from django.conf import settings
from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand, CommandParser
from django.db import transaction

from devices import services
from devices.choices import DeviceType, Protocol
from devices.models import Device, DeviceGroup

HAS_TEMPERATURE = "has(trigger.telemetry.temperature)"
SET_22 = {"type": "set_value", "params": {"value": 22}}
DEMO_TREE = {"Headquarters": {"Building A": {"Floor 1": {}, "Floor 2": {}}, "Office HVAC": {}}, "Warehouse": {}}

DEMO_DEVICES = [
    (
        "temp_sensor_01",
        "Temperature sensor, floor 1",
        DeviceType.SENSOR,
        Protocol.MQTT,
        "Floor 1",
        ["lab", "temperature"],
    ),
    ("temp_sensor_02", "Temperature sensor, floor 2", DeviceType.SENSOR, Protocol.MQTT, "Floor 2", ["temperature"]),
    ("fan_01", "Ceiling fan, floor 1", DeviceType.ACTUATOR, Protocol.MQTT, "Floor 1", ["lab", "hvac"]),
    ("hvac_01", "Air handler", DeviceType.ACTUATOR, Protocol.MQTT, "Office HVAC", ["hvac"]),
    ("camera_01", "Loading dock camera", DeviceType.CAMERA, Protocol.RTSP, "Warehouse", ["security"]),
    ("gateway_01", "Warehouse gateway", DeviceType.GATEWAY, Protocol.MQTT, "Warehouse", []),
    ("plc_01", "Conveyor PLC", DeviceType.INDUSTRIAL, Protocol.MODBUS, "Warehouse", ["line-1"]),
]

# The demo devices `serve` simulates in the embedded mode.
SIMULATED_DEVICES = ["temp_sensor_01", "temp_sensor_02", "fan_01", "hvac_01"]


class Command(BaseCommand):
    help = "Create the demo superuser and demo devices (idempotent)."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--username", default="admin")

    def handle(self, *args: Any, username: str, **options: Any) -> None:
        self._superuser(username)
        with transaction.atomic():
            groups = self._tree(DEMO_TREE, None)
            created = 0
            for device_id, name, device_type, protocol, group, tags in DEMO_DEVICES:
                if not Device.objects.filter(pk=device_id).exists():
                    services.create_device(
                        actor=None,
                        id=device_id,
                        name=name,
                        device_type=device_type,
                        protocol=protocol,
                        group=groups[group],
                        tags=tags,
                    )
                    created += 1
        self.stdout.write(f"Demo devices: {created} created, {len(DEMO_DEVICES) - created} already there.")
        self._simulated_credentials()
        self._alarm_rules()
        self._scenes(groups)

    def _scenes(self, groups: dict[str, DeviceGroup]) -> None:
        """The demo scenes: the fan follows the first sensor's temperature (the simulated readings
        wander around 22-24 °C, so both branches run in a demo), and the office HVAC is set to 22 °C
        every weekday morning."""
        from control.scenes import services as scene_services
        from control.scenes.models import Scene

        def fan(state: bool) -> dict[str, Any]:
            command = {"type": "set_state", "params": {"state": state}, "target": {"device": "fan_01"}}
            return {"type": "send_command", "params": command}

        office_hvac = groups["Office HVAC"].pk
        wanted = [
            {
                "name": "Demo: temperature control",
                "description": "Fan on above 23.5 °C between 08:00 and 20:00, off below 22.5 °C.",
                "time_zone": settings.TIME_ZONE,
                "cooldown": 30,
                "triggers": [{"kind": "device_data", "device": "temp_sensor_01", "condition": HAS_TEMPERATURE}],
                "conditions": ["trigger.telemetry.temperature > 23.5", "local.hour >= 8 && local.hour < 20"],
                "then_actions": [fan(True)],
                "else_if": [{"condition": "trigger.telemetry.temperature < 22.5", "actions": [fan(False)]}],
            },
            {
                "name": "Demo: office HVAC morning",
                "description": "Every weekday at 07:00, set the office HVAC to 22 °C.",
                "time_zone": settings.TIME_ZONE,
                "triggers": [{"kind": "schedule", "cron": "0 7 * * 1-5"}],
                "then_actions": [{"type": "send_command", "params": {**SET_22, "target": {"group": office_hvac}}}],
            },
        ]
        made = 0
        with transaction.atomic():
            for fields in wanted:
                if not Scene.objects.filter(name=fields["name"]).exists():
                    scene_services.create_scene(None, **fields)
                    made += 1
        self.stdout.write(f"Demo scenes: {made} created, {len(wanted) - made} already there.")

    def _alarm_rules(self) -> None:
        """Two rules that raise and clear a high-temperature alarm on the simulated sensors (the
        device-offline alarm is built in)."""
        from rules import services as rule_services
        from rules.choices import Scope, Trigger
        from rules.models import Rule

        wanted = [
            (
                "Demo: temperature too high",
                "telemetry.temperature > 24.0",
                [{"type": "raise_alarm", "params": {"type": "high_temperature", "severity": "warning"}}],
            ),
            (
                "Demo: temperature back to normal",
                "telemetry.temperature < 23.0",
                [{"type": "clear_alarm", "params": {"type": "high_temperature"}}],
            ),
        ]
        made = 0
        with transaction.atomic():
            for name, condition, actions in wanted:
                if not Rule.objects.filter(name=name).exists():
                    rule_services.create_rule(
                        None,
                        name=name,
                        trigger=Trigger.TELEMETRY,
                        scope=Scope.DEVICE_TYPE,
                        scope_value=DeviceType.SENSOR,
                        condition=condition,
                        actions=actions,
                    )
                    made += 1
        self.stdout.write(f"Demo alarm rules: {made} created, {len(wanted) - made} already there.")
        self._notifications()

    def _notifications(self) -> None:
        """Major and worse alarms (a device going offline) mailed to a demo on-call address: the
        embedded mode's mail backend prints them on the console."""
        from alarms.models import NotificationChannel, NotificationRule
        from alarms.notifications import save_channel, save_rule

        if NotificationRule.objects.filter(name="Demo: major alarms to on-call").exists():
            return
        with transaction.atomic():
            channel = NotificationChannel.objects.filter(name="Demo on-call (email)").first() or save_channel(
                NotificationChannel(name="Demo on-call (email)", kind="email", email_addresses=["oncall@example.com"])
            )
            save_rule(NotificationRule(name="Demo: major alarms to on-call", min_severity="major"), channels=[channel])
        self.stdout.write("Demo notification rule: major alarms are mailed to oncall@example.com (printed here).")

    def _simulated_credentials(self) -> None:
        """Activate the demo devices the simulator plays and keep their secrets in var/ (the only
        copy: the registry keeps hashes). Devices active without a saved secret get a new one."""
        from sdk.simulator import DeviceCredentials, load_credentials, save_credentials

        path = settings.VAR_DIR / "demo-devices.json"
        saved = {c.id: c for c in load_credentials(path)} if path.exists() else {}
        credentials = []
        for device_id in SIMULATED_DEVICES:
            device = Device.objects.get(pk=device_id)
            if device.activation_state == "active" and device_id in saved:
                credentials.append(saved[device_id])
                continue
            if device.activation_state == "active":
                secret = services.rotate_credentials(device, actor=None)
            else:
                secret = services.activate_device(device, actor=None)
            credentials.append(DeviceCredentials(id=device_id, secret=secret))
        save_credentials(path, credentials)
        self.stdout.write(f"Simulated demo devices: {', '.join(SIMULATED_DEVICES)} (secrets in {path}).")

    def _superuser(self, username: str) -> None:
        User = get_user_model()
        password_file = settings.VAR_DIR / "demo-admin-password"
        if not User.objects.filter(username=username).exists():
            password = secrets.token_urlsafe(12)
            User.objects.create_superuser(username=username, email="", password=password)
            password_file.write_text(password)
            password_file.chmod(0o600)
        if password_file.exists():
            password = password_file.read_text().strip()
            self.stdout.write(self.style.SUCCESS(f"Admin login: {username} / {password}"))
        else:
            self.stdout.write(f"Admin user {username!r} exists (its password was set elsewhere).")

    def _tree(self, tree: dict[str, Any], parent: DeviceGroup | None) -> dict[str, DeviceGroup]:
        groups: dict[str, DeviceGroup] = {}
        for name, children in tree.items():
            group, _ = DeviceGroup.objects.get_or_create(name=name, parent=parent)
            groups[name] = group
            groups.update(self._tree(children, group))
        return groups
