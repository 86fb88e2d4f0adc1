"""The FluxIoT device simulator: simulated MQTT devices with real credentials, a Last Will, a telemetry
rate and random-walk values, and answers to commands; used by the demo, the tests and the benchmarks.

Run ``python -m sdk.simulator --help``; see ``sdk/simulator/README.md``.
"""

from sdk.simulator.core import (
    COMMAND_TYPES,
    DEFAULT_BROKER_URL,
    BrokerAddress,
    CommandBehaviour,
    CommandError,
    CommandMode,
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
    parse_command,
    provision_devices,
    save_credentials,
)

__all__ = [
    "COMMAND_TYPES",
    "DEFAULT_BROKER_URL",
    "BrokerAddress",
    "CommandBehaviour",
    "CommandError",
    "CommandMode",
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
    "parse_command",
    "provision_devices",
    "save_credentials",
]
