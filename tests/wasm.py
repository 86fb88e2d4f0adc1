"""The SDK's C example plugins, compiled from source, for any test (a pytest plugin: tests/conftest.py)."""

from __future__ import annotations

import os
import shutil
import struct
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SDK = ROOT / "sdk" / "plugins"


@pytest.fixture(scope="session")
def plugin_examples(tmp_path_factory) -> dict[str, bytes]:
    """The SDK's C examples, built with sdk/plugins/build.sh: {name: wasm bytes}."""
    missing = [tool for tool in ("clang", "wasm-ld") if shutil.which(tool) is None]
    if missing:
        # CI (.ci/run) installs clang and lld and sets FLUXIOT_REQUIRE_TOOLCHAIN: there, a missing
        # toolchain is a failure, never a quietly skipped test.
        if os.environ.get("FLUXIOT_REQUIRE_TOOLCHAIN"):
            pytest.fail(f"{', '.join(missing)} not installed but FLUXIOT_REQUIRE_TOOLCHAIN is set")
        pytest.skip(f"{', '.join(missing)} not installed (apt-get install clang lld; .ci/run does it)")
    out = tmp_path_factory.mktemp("plugins")
    build = subprocess.run(["bash", str(SDK / "build.sh"), "-o", str(out)], capture_output=True, text=True)
    assert build.returncode == 0, build.stderr
    modules = {path.stem: path.read_bytes() for path in out.glob("*.wasm")}
    assert set(modules) >= {"frame_decoder", "unit_convert"}
    return modules


def sensor_frame(
    ts: int = 1_700_000_000,
    temperature: int = 2150,
    humidity: int = 4512,
    battery: int = 3000,
    status: int = 0,
    checksum: int | None = None,
) -> bytes:
    """A 12-byte frame of the frame_decoder example (sdk/plugins/README.md): big-endian epoch
    seconds, temperature ×100, humidity ×100, battery mV, status flags, XOR checksum."""
    body = struct.pack(">IhHHB", ts, temperature, humidity, battery, status)
    if checksum is None:
        checksum = 0
        for byte in body:
            checksum ^= byte
    return body + bytes([checksum])
