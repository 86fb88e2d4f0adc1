"""The FluxIoT device simulator: simulated MQTT devices with real credentials, a Last Will, a telemetry
rate and random-walk values; used by the demo, the tests and the benchmarks.

Run ``python -m sdk.simulator --help``; see ``sdk/simulator/README.md``.
"""

from sdk.simulator.core import (
    DEFAULT_BROKER_URL,
    BrokerAddress,
    DeviceCredentials,
    DeviceState,
    EventLoop,
    MessageKey,
    PublishStats,
    SimulatedDevice,
    Simulator,
    SimulatorSummary,
    TelemetryGenerator,
    load_credentials,
    parse_broker_url,
    provision_devices,
    save_credentials,
)

__all__ = [
    "DEFAULT_BROKER_URL",
    "BrokerAddress",
    "DeviceCredentials",
    "DeviceState",
    "EventLoop",
    "MessageKey",
    "PublishStats",
    "SimulatedDevice",
    "Simulator",
    "SimulatorSummary",
    "TelemetryGenerator",
    "load_credentials",
    "parse_broker_url",
    "provision_devices",
    "save_credentials",
]
