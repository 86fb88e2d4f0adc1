"""Serve the platform over HTTP and WebSocket with Daphne, on WEB_HOST:WEB_PORT from settings.

In the embedded mode (no MQTT_URL) the same process also runs the MQTT broker, the bridge, the beat
schedule and, with --simulate, the demo devices: everything `make run` needs, with nothing else to
install. In production each of those is a process of its own (Procfile).
"""

from __future__ import annotations

import logging
from contextlib import ExitStack
from typing import Any

from channels.routing import get_default_application
from daphne.endpoints import build_endpoint_description_strings
from daphne.server import Server
from django.conf import settings
from django.core.management.base import BaseCommand, CommandParser

logger = logging.getLogger(__name__)


class Command(BaseCommand):
    help = "Run the web process (admin, REST API, WebSocket); in the embedded mode also broker and bridge."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--host", default=settings.WEB_HOST)
        parser.add_argument("--port", type=int, default=settings.WEB_PORT)
        parser.add_argument(
            "--simulate",
            action="store_true",
            help="embedded mode: run the demo devices of var/demo-devices.json (see seed_demo)",
        )

    def handle(self, *args: Any, host: str, port: int, simulate: bool, **options: Any) -> None:
        with ExitStack() as stack:
            if settings.EMBEDDED_BROKER:
                self._embedded(stack, simulate)
            self.stdout.write(f"FluxIoT on http://{host}:{port}/  (admin: /admin/, API: /api/v1/, docs: /api/docs/)")
            Server(
                application=get_default_application(),
                endpoints=build_endpoint_description_strings(host=host, port=port),
                verbosity=0,
            ).run()
        self.stdout.write("stopped")

    def _embedded(self, stack: ExitStack, simulate: bool) -> None:
        from fluxiot.embedded import PeriodicTasks
        from transport.bridge import Bridge
        from transport.embedded_broker import start_embedded_broker

        broker_host, broker_port, stop_broker = start_embedded_broker()
        stack.callback(stop_broker)
        # The port may be the next free one: everything in this process that publishes (commands)
        # connects where the broker really is.
        settings.EMBEDDED_BROKER_HOST, settings.EMBEDDED_BROKER_PORT = broker_host, broker_port
        from control.publisher import reset_publisher

        stack.callback(reset_publisher)  # disconnect before the broker goes away
        self.stdout.write(f"MQTT broker (embedded) on mqtt://{broker_host}:{broker_port}")

        bridge = Bridge.from_settings(
            host=broker_host,
            port=broker_port,
            username=settings.MQTT_BRIDGE_USERNAME,
            password=settings.MQTT_BRIDGE_PASSWORD,
        )
        bridge.start()
        stack.callback(bridge.stop)

        stack.callback(PeriodicTasks().start().stop)

        if simulate:
            from sdk.simulator import Simulator, load_credentials

            path = settings.VAR_DIR / "demo-devices.json"
            if not path.exists():
                self.stderr.write(f"--simulate: {path} is missing; run `manage.py seed_demo` first")
                return
            simulator = Simulator(
                load_credentials(path),
                broker=f"mqtt://{broker_host}:{broker_port}",
                rate=1.0,
                mqtt_version=3,
                record_times=False,
            )
            simulator.start()
            stack.callback(simulator.stop)
            self.stdout.write(f"Simulating {len(simulator.devices)} demo devices, one message a second each")
