"""``python -m sdk.simulator``: run simulated devices against an MQTT broker.

    python -m sdk.simulator --credentials creds.json --devices 10 --rate 1 --duration 30
    python -m sdk.simulator --create 50 --prefix sim- --credentials var/sim.json --count 5000 --rate 0
    python -m sdk.simulator --credentials creds.json --commands slow --command-delay 10

Devices answer the commands they receive: ``--commands success`` (default), ``fail``, ``slow``
(final reply after ``--command-delay``, default 5 s) or ``silent`` (never).

Exit status: 0 when every device connected and every QoS 1 publish was acknowledged, 1 otherwise,
2 for bad arguments.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import threading
from collections.abc import Sequence
from types import FrameType

from sdk.simulator.core import (
    DEFAULT_BROKER_URL,
    CommandBehaviour,
    CommandMode,
    DeviceCredentials,
    Simulator,
    load_credentials,
    parse_broker_url,
    provision_devices,
    save_credentials,
)

logger = logging.getLogger("sdk.simulator")


def _setup_django() -> None:
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "fluxiot.settings")
    from django.apps import apps

    if not apps.ready:
        import django

        django.setup()


def _default_broker(django_ready: bool) -> str:
    """settings.MQTT_URL (or the embedded broker's address) inside the project, else $MQTT_URL, else
    the local default."""
    if django_ready or os.environ.get("DJANGO_SETTINGS_MODULE"):
        try:
            from django.conf import settings

            url = getattr(settings, "MQTT_URL", "")
            if url:
                return url
            host = getattr(settings, "EMBEDDED_BROKER_HOST", "127.0.0.1")
            port = getattr(settings, "EMBEDDED_BROKER_PORT", 1883)
            return f"mqtt://{host}:{port}"
        except Exception:  # settings that cannot load (no SECRET_KEY…): fall back quietly
            logger.debug("Django settings unavailable for the default broker", exc_info=True)
    return os.environ.get("MQTT_URL") or DEFAULT_BROKER_URL


def _positive_float(text: str) -> float:
    value = float(text)
    if value < 0:
        raise argparse.ArgumentTypeError("must be >= 0")
    return value


def _non_negative_int(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError("must be >= 0")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m sdk.simulator",
        description="Simulated FluxIoT devices: real credentials, Last Will, telemetry at a rate, answers to commands.",
    )
    parser.add_argument("--credentials", required=True, help='JSON file of [{"id": ..., "secret": ...}]')
    parser.add_argument(
        "--create",
        nargs="?",
        const=0,
        type=_non_negative_int,
        metavar="N",
        help="create and activate N devices (default: --devices) in the FluxIoT database through the "
        "registry services, and write their credentials to --credentials",
    )
    parser.add_argument("--prefix", default="sim-", help="device id prefix for --create (default: sim-)")
    parser.add_argument("--devices", type=_non_negative_int, help="how many devices to run (default: all)")
    parser.add_argument(
        "--rate", type=_positive_float, default=1.0, help="messages per second per device; 0: as fast as acked"
    )
    parser.add_argument("--total-rate", type=_positive_float, help="messages per second across all devices")
    parser.add_argument("--duration", type=_positive_float, help="seconds to publish")
    parser.add_argument("--count", type=_non_negative_int, help="telemetry messages to publish in total")
    parser.add_argument("--broker", help="mqtt://host:port or mqtts://host:port (default: settings.MQTT_URL)")
    parser.add_argument("--mqtt-version", default="5", choices=["3", "3.1.1", "311", "5"], help="default: 5")
    parser.add_argument("--qos", type=int, default=1, choices=[0, 1], help="telemetry QoS (default: 1)")
    parser.add_argument("--keepalive", type=int, default=30)
    parser.add_argument("--max-inflight", type=int, default=20, help="QoS 1 messages in flight per device")
    parser.add_argument("--seed", help="random seed, for reproducible values")
    parser.add_argument("--drain-timeout", type=_positive_float, default=10.0, help="seconds to wait for PUBACKs")
    parser.add_argument("--connect-timeout", type=_positive_float, default=30.0)
    parser.add_argument(
        "--commands",
        default=CommandMode.SUCCESS.value,
        choices=[mode.value for mode in CommandMode],
        help="how devices answer commands: success (default), fail, slow (final reply after --command-delay, "
        "default 5 s) or silent (never: the platform times them out)",
    )
    parser.add_argument(
        "--command-delay",
        type=_positive_float,
        metavar="SECONDS",
        help="seconds between a command's executing reply and its final one (default: 5 for slow, else 0)",
    )
    parser.add_argument("--log-level", default="INFO")
    return parser


def command_behaviour(args: argparse.Namespace) -> CommandBehaviour:
    """The ``CommandBehaviour`` that ``--commands`` and ``--command-delay`` ask for."""
    return CommandBehaviour(mode=CommandMode(args.commands), delay=args.command_delay)


def _raise_interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    django_ready = False
    if args.create is not None:
        _setup_django()
        django_ready = True
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s %(message)s")
    logger.setLevel(args.log_level.upper())

    credentials: list[DeviceCredentials]
    if args.create is not None:
        wanted = args.create or args.devices or 10
        credentials = provision_devices(wanted, args.prefix)
        save_credentials(args.credentials, credentials)
        logger.info("wrote the credentials of %d devices to %s", len(credentials), args.credentials)
    else:
        try:
            credentials = load_credentials(args.credentials)
        except (OSError, ValueError) as exc:
            logger.error("cannot read credentials: %s", exc)
            return 2
    if args.devices is not None:
        if args.devices > len(credentials):
            logger.error("--devices %d but only %d credentials in %s", args.devices, len(credentials), args.credentials)
            return 2
        credentials = credentials[: args.devices]
    if not credentials:
        logger.error("no devices to run")
        return 2

    try:
        broker = parse_broker_url(args.broker or _default_broker(django_ready))
    except ValueError as exc:
        logger.error("%s", exc)
        return 2

    simulator = Simulator(
        credentials,
        broker,
        rate=args.rate,
        total_rate=args.total_rate,
        duration=args.duration,
        count=args.count,
        mqtt_version=args.mqtt_version,
        qos=args.qos,
        keepalive=args.keepalive,
        max_inflight=args.max_inflight,
        seed=args.seed,
        connect_timeout=args.connect_timeout,
        record_times=True,
        command_behaviour=command_behaviour(args),
    )
    previous = None
    if threading.current_thread() is threading.main_thread():
        previous = signal.signal(signal.SIGTERM, _raise_interrupt)
    interrupted = False
    try:
        try:
            simulator.start()
        except ConnectionError as exc:
            logger.error("%s", exc)
            return 1
        try:
            while not simulator.wait(0.5):
                pass
        except KeyboardInterrupt:
            interrupted = True
            logger.info("interrupted: stopping")
        simulator.stop(drain_timeout=args.drain_timeout)
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
        if not simulator.stopped:
            simulator.stop(drain_timeout=0)
    summary = simulator.summary()
    print(summary.line(), flush=True)
    all_connected = summary.connected == summary.devices
    all_acked = simulator.stats.outstanding == 0 and summary.rejected == 0 and summary.failed == 0
    if not interrupted and not (all_connected and all_acked):
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
