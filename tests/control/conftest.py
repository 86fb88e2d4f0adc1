"""Fixtures of the command tests: a real broker the platform publishes to, and devices listening."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest

from devices.choices import ActivationState, DeviceStatus
from fluxiot.celery import app as celery_app
from tests.brokers import MqttProbe
from tests.factories import DeviceFactory


@pytest.fixture
def eager_celery(settings: Any) -> Iterator[None]:
    """Tasks run where they are queued (as in the embedded mode)."""
    settings.CELERY_TASK_ALWAYS_EAGER = True
    old = celery_app.conf.task_always_eager
    celery_app.conf.task_always_eager = True
    yield
    celery_app.conf.task_always_eager = old


@pytest.fixture
def online_device(db: Any) -> Any:
    return DeviceFactory(device_type="actuator", activation_state=ActivationState.ACTIVE, status=DeviceStatus.ONLINE)


class Listener(MqttProbe):
    """A device-side MQTT client subscribed to a device's commands."""

    def commands(self, count: int, timeout: float = 5.0) -> list[Any]:
        got = []
        for _ in range(count):
            message = self.message(timeout)
            if message is None:
                break
            got.append(message)
        return got

    @staticmethod
    def payload(message: Any) -> dict[str, Any]:
        return json.loads(message.payload)


@pytest.fixture
def listen(command_broker: Any) -> Iterator[Any]:
    """``listen(device_id)``: a subscribed MQTT 5 client receiving that device's commands."""
    probes: list[Listener] = []

    def make(device_id: str, protocol: int = 5) -> Listener:
        probe = Listener(command_broker.host, command_broker.port, protocol=protocol)
        assert probe.connect() is not None
        assert probe.subscribe(f"devices/{device_id}/commands/+") is not None
        probes.append(probe)
        return probe

    yield make
    for probe in probes:
        probe.close()
