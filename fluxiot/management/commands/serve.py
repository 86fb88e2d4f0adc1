"""Serve the platform over HTTP and WebSocket with Daphne, on WEB_HOST:WEB_PORT from settings."""

from __future__ import annotations

import logging
from typing import Any

from channels.routing import get_default_application
from daphne.endpoints import build_endpoint_description_strings
from daphne.server import Server
from django.conf import settings
from django.core.management.base import BaseCommand, CommandParser

logger = logging.getLogger(__name__)


class Command(BaseCommand):
    help = "Run the web process (admin, REST API, WebSocket) with Daphne."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--host", default=settings.WEB_HOST)
        parser.add_argument("--port", type=int, default=settings.WEB_PORT)

    def handle(self, *args: Any, host: str, port: int, **options: Any) -> None:
        self.stdout.write(f"FluxIoT on http://{host}:{port}/  (admin: /admin/, API: /api/v1/, docs: /api/docs/)")
        Server(
            application=get_default_application(),
            endpoints=build_endpoint_description_strings(host=host, port=port),
            verbosity=0,
        ).run()
