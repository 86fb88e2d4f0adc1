"""Fixtures of the command tests: a real broker the platform publishes to, and devices listening."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from devices.choices import ActivationState, DeviceStatus
from fluxiot.celery import app as celery_app
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
