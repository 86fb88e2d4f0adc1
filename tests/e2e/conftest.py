"""The e2e fixtures: the platform's processes around a private Mosquitto with dynamic security."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.e2e.platform import Platform


@pytest.fixture
def platform(dynsec_settings, tmp_path) -> Iterator[Platform]:
    p = Platform(dynsec_settings, tmp_path)
    p.start("worker")
    p.start("bridge")
    try:
        yield p
    finally:
        p.stop_all()
