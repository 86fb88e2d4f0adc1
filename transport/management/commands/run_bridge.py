"""``manage.py run_bridge``: the MQTT → Celery transport bridge, until SIGTERM or SIGINT."""

from __future__ import annotations

import logging
from typing import Any

from django.conf import settings
from django.core.management.base import BaseCommand, CommandParser
from django.utils.module_loading import import_string

from transport.bridge import Bridge

log = logging.getLogger("transport.bridge")


class Command(BaseCommand):
    help = (
        "Run the transport bridge: a shared, persistent MQTT subscription to the device uplink topics, "
        "batched into ingest tasks; QoS 1 acknowledged only once a batch is queued. Stops gracefully "
        "(flushing its batch) on SIGTERM/SIGINT."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--host", help="broker host (default: from MQTT_URL, or the embedded broker's)")
        parser.add_argument("--port", type=int, help="broker port (default: from MQTT_URL, or the embedded broker's)")
        parser.add_argument("--batch-size", type=int, help="messages per batch (default: BRIDGE_BATCH_SIZE)")
        parser.add_argument("--batch-ms", type=int, help="oldest message's age that cuts a batch (BRIDGE_BATCH_MS)")
        parser.add_argument("--client-id", help="MQTT client id, stable per bridge (default: BRIDGE_CLIENT_ID)")
        parser.add_argument("--share-group", help="shared subscription group (default: BRIDGE_SHARE_GROUP)")
        parser.add_argument(
            "--protocol", choices=["auto", "5", "3.1.1"], help="MQTT version (default: 3.1.1 embedded, else auto)"
        )
        parser.add_argument("--metrics-port", type=int, help="Prometheus port on 127.0.0.1 (BRIDGE_METRICS_PORT)")
        parser.add_argument(
            "--handoff",
            help="dotted path of a callable(items) used instead of the ingest task (tests, benchmarks)",
        )
        parser.add_argument("--stop-timeout", type=float, default=30.0, help="seconds to flush at stop")
        parser.add_argument(
            "--release-session",
            action="store_true",
            help="on stop, leave the shared group for good (scale-down): unsubscribe, drain, end the session",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        handoff = import_string(options["handoff"]) if options["handoff"] else None
        bridge = Bridge.from_settings(
            host=options["host"],
            port=options["port"],
            handoff=handoff,
            batch_size=options["batch_size"],
            batch_ms=options["batch_ms"],
            client_id=options["client_id"],
            share_group=options["share_group"],
            protocol=options["protocol"],
        )
        metrics_port = options["metrics_port"] if options["metrics_port"] is not None else settings.BRIDGE_METRICS_PORT
        if metrics_port > 0:
            from prometheus_client import start_http_server

            start_http_server(metrics_port, addr="127.0.0.1")
            log.info("bridge metrics on http://127.0.0.1:%d/metrics", metrics_port)
        log.info(
            "bridge %s → %s:%d, group %s, batches of %d / %d ms",
            bridge.client_id,
            bridge.host,
            bridge.port,
            bridge.share_group,
            bridge.batch_size,
            int(bridge.batch_seconds * 1000),
        )
        bridge.run_forever(stop_timeout=options["stop_timeout"], release_session=options["release_session"])
