"""Fixtures of the alarm tests: a real SMTP server (aiosmtpd) and a real HTTP receiver on free local
ports, Celery running tasks where they are queued, and on-commit callbacks run."""

from __future__ import annotations

import email
import email.policy
import hashlib
import hmac
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from aiosmtpd.controller import Controller

from devices.choices import ActivationState, DeviceStatus
from fluxiot.celery import app as celery_app
from tests.brokers import free_port
from tests.factories import DeviceFactory

SECRET = "a-webhook-secret-of-some-length"


@pytest.fixture
def eager_celery(settings: Any):
    """Tasks run where they are queued, and a task's retries run right after it (Celery does so when
    eager tasks do not propagate their exceptions): the worker's retry path, without a worker."""
    settings.CELERY_TASK_ALWAYS_EAGER = True
    old = celery_app.conf.task_always_eager, celery_app.conf.task_eager_propagates
    celery_app.conf.task_always_eager, celery_app.conf.task_eager_propagates = True, False
    yield
    celery_app.conf.task_always_eager, celery_app.conf.task_eager_propagates = old


@pytest.fixture
def embedded_celery(eager_celery):
    """As in the embedded mode: eager tasks propagate their exceptions (a retry too)."""
    celery_app.conf.task_eager_propagates = True


@pytest.fixture
def committed(django_capture_on_commit_callbacks):
    """``with committed():`` runs the block's on-commit callbacks (events, deliveries) at its end."""

    def run():
        return django_capture_on_commit_callbacks(execute=True)

    return run


@pytest.fixture
def device(db):
    return DeviceFactory(
        id="pump-1", name="Pump 1", activation_state=ActivationState.ACTIVE, status=DeviceStatus.ONLINE
    )


class _SMTPHandler:
    def __init__(self) -> None:
        self.messages: list[email.message.EmailMessage] = []
        self.envelopes: list[Any] = []

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        self.envelopes.append(envelope)
        self.messages.append(email.message_from_bytes(envelope.content, policy=email.policy.default))
        return "250 Message accepted"


@pytest.fixture
def smtp_server(settings):
    """A real SMTP server on 127.0.0.1 (a free port), and the settings that send mail to it."""
    handler = _SMTPHandler()
    controller = Controller(handler, hostname="127.0.0.1", port=free_port())
    controller.start()
    settings.EMAIL_BACKEND = "django.core.mail.backends.smtp.EmailBackend"
    settings.EMAIL_HOST = "127.0.0.1"
    settings.EMAIL_PORT = controller.port
    settings.EMAIL_USE_TLS = settings.EMAIL_USE_SSL = False
    settings.EMAIL_HOST_USER = settings.EMAIL_HOST_PASSWORD = ""
    settings.DEFAULT_FROM_EMAIL = "alarms@fluxiot.test"
    handler.port = controller.port
    yield handler
    controller.stop()


class _Receiver(BaseHTTPRequestHandler):
    def do_POST(self):
        length = int(self.headers.get("Content-Length", 0))
        body = self.rfile.read(length)
        # HTTP header names are case-insensitive (urllib sends "X-fluxiot-signature"): keep the message.
        self.server.requests.append({"path": self.path, "headers": self.headers, "body": body})
        status = self.server.answers.pop(0) if self.server.answers else 200
        self.send_response(status)
        self.end_headers()
        self.wfile.write(b"ok" if status < 400 else b"broken")

    def log_message(self, *args):
        pass


class Receiver:
    """What the webhook receiver got; ``answers`` are the status codes of the next answers (200 once
    they run out)."""

    def __init__(self, server: ThreadingHTTPServer) -> None:
        self.server = server
        self.url = f"http://127.0.0.1:{server.server_address[1]}/hook"

    @property
    def requests(self) -> list[dict[str, Any]]:
        return self.server.requests

    @property
    def answers(self) -> list[int]:
        return self.server.answers

    def verified(self, request: dict[str, Any], secret: str = SECRET) -> dict[str, Any]:
        """The JSON body of a request whose signature checks out (the way docs/ALARMS.md says)."""
        expected = "sha256=" + hmac.new(secret.encode(), request["body"], hashlib.sha256).hexdigest()
        assert hmac.compare_digest(request["headers"]["X-FluxIoT-Signature"], expected)
        return json.loads(request["body"])


@pytest.fixture
def receiver():
    """A real HTTP server on 127.0.0.1 (a free port) recording every POST."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Receiver)
    server.requests, server.answers = [], []
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield Receiver(server)
    server.shutdown()
    server.server_close()
    thread.join(5)


@pytest.fixture
def fast_retries(settings):
    settings.NOTIFY_RETRY_BACKOFF_SECONDS = 0.01
    settings.NOTIFY_RETRY_BACKOFF_MAX_SECONDS = 0.05
