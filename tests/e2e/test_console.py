"""The command console of a device's admin page in a real browser: headless Chromium (Debian's, driven
by Playwright) against a live server, a private Mosquitto carrying the command to a device (a paho
MQTT 5 client), and the device's replies coming back through a real bridge whose hand-off runs the
ingest task in-process."""

from __future__ import annotations

import json
import os
import queue
import secrets
import shutil
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest
from django.apps import apps
from django.db import connection

from control.choices import CommandStatus
from control.models import DeviceCommand
from devices.choices import ActivationState, DeviceStatus
from fluxiot import roles
from tests.brokers import MqttProbe
from tests.factories import DeviceFactory, UserFactory
from transport.bridge import Bridge

pytestmark = [pytest.mark.slow, pytest.mark.django_db(transaction=True), pytest.mark.timeout(90)]

CHROMIUM = shutil.which("chromium")
PASSWORD = "pw-for-tests"  # UserFactory's
WAIT_MS = 10_000


def _ingest(items: list[list[Any]]) -> None:
    """The bridge's hand-off: the ingest task run right here (no worker), then this thread's
    database connection closed (the flusher thread outlives the test's transactions otherwise)."""
    from telemetry.tasks import ingest_batch

    try:
        ingest_batch.apply(args=[items], throw=True)
    finally:
        connection.close()


@pytest.fixture
def bridge(command_broker: Any) -> Iterator[Bridge]:
    running = Bridge.from_settings(
        handoff=_ingest,
        client_id=f"console-bridge-{secrets.token_hex(4)}",
        share_group=f"console{secrets.token_hex(3)}",
        batch_ms=20,
        reconnect_min_delay=0.1,
    )
    running.start()
    assert running.wait_ready(10), "the bridge did not subscribe"
    yield running
    running.stop(timeout=5)


class ObedientDevice:
    """A device on MQTT 5 that answers each command ``executing`` at once, then ``success`` (its
    params as the result) once the test says so, on the response topic with the correlation data."""

    def __init__(self, broker: Any, device_id: str) -> None:
        self.proceed = threading.Event()
        self.commands: queue.Queue = queue.Queue()
        self.probe = MqttProbe(broker.host, broker.port, protocol=5, client_id=device_id)
        reason = self.probe.connect()
        assert reason is not None and reason.value == 0, reason
        assert self.probe.subscribe(f"devices/{device_id}/commands/+") == [1]
        self._thread = threading.Thread(target=self._serve, name=f"device-{device_id}", daemon=True)
        self._stop = threading.Event()
        self._thread.start()

    def _reply(self, message: Any, body: dict[str, Any]) -> None:
        from paho.mqtt.packettypes import PacketTypes
        from paho.mqtt.properties import Properties

        properties = Properties(PacketTypes.PUBLISH)
        properties.CorrelationData = message.properties.CorrelationData
        info = self.probe.client.publish(
            message.properties.ResponseTopic, json.dumps(body), qos=1, properties=properties
        )
        info.wait_for_publish(5)

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                message = self.probe.messages.get(timeout=0.1)
            except queue.Empty:
                continue
            command = json.loads(message.payload)
            self.commands.put(command)
            self._reply(message, {"status": "executing"})
            if self.proceed.wait(30) and not self._stop.is_set():
                self._reply(message, {"status": "success", "result": command["params"]})

    def close(self) -> None:
        self._stop.set()
        self.proceed.set()
        self._thread.join(5)
        self.probe.close()


@contextmanager
def chromium_page() -> Iterator[Any]:
    """A page of a headless Chromium (the system's: no browser download), its JS errors collected in
    ``page.js_errors``. Playwright's sync API runs an event loop in this thread, and Django refuses
    database queries in a thread with a running loop: query before or after the block, not in it."""
    from playwright import sync_api

    if CHROMIUM is None:
        # CI (.ci/run) installs Chromium and sets FLUXIOT_REQUIRE_BROWSER: there, a missing browser
        # is a failure, never a quietly skipped test.
        if os.environ.get("FLUXIOT_REQUIRE_BROWSER"):
            pytest.fail("chromium is not installed but FLUXIOT_REQUIRE_BROWSER is set")
        pytest.skip("chromium is not installed (apt-get install chromium; .ci/run does it)")
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, headless=True)
        try:
            page = browser.new_page()
            page.set_default_timeout(WAIT_MS)
            page.js_errors = []
            page.on("pageerror", lambda error: page.js_errors.append(str(error)))
            sync_api.expect.set_options(timeout=WAIT_MS)
            yield page
        finally:
            browser.close()


def test_send_a_command_from_the_device_page_and_follow_it_to_success(live_server, command_broker, bridge):
    from playwright.sync_api import expect

    roles.sync_roles(apps)  # the role groups come from a data migration: gone after an earlier flush
    user = UserFactory(username="console-operator", is_staff=True, roles=[roles.OPERATOR])
    device = DeviceFactory(
        id="lamp-e2e", device_type="actuator", activation_state=ActivationState.ACTIVE, status=DeviceStatus.ONLINE
    )
    device_page = f"/admin/devices/device/{device.id}/change/"
    lamp = ObedientDevice(command_broker, device.id)
    try:
        with chromium_page() as page:
            # Log in through the login page, landing on the device's page.
            page.goto(f"{live_server.url}/admin/login/?next={device_page}")
            page.fill("#id_username", user.username)
            page.fill("#id_password", PASSWORD)
            page.click("input[type=submit]")
            page.wait_for_url(f"**{device_page}")

            # The catalogue narrowed to what an actuator takes; the params start as the type's example.
            type_select = page.locator("#command-type")
            expect(type_select).to_be_enabled()
            offered = type_select.locator("option").evaluate_all("options => options.map(o => o.value)")
            assert "set_state" in offered and "reboot" in offered
            assert "take_snapshot" not in offered and "set_sampling_rate" not in offered
            type_select.select_option("set_state")
            assert json.loads(page.input_value("#command-params")) == {"state": True}
            expect(page.locator("#command-description")).to_contain_text("Switch on")
            expect(page.locator("#recent-commands-rows")).to_contain_text("No commands yet.")

            # Bad params: the API's 400 is shown next to the form, nothing is sent.
            page.fill("#command-params", '{"state": "on"}')
            page.click("#command-send")
            expect(page.locator("#command-errors")).to_contain_text("Params: state: 'on' is not of type 'boolean'")
            page.fill("#command-params", "{not json")
            page.click("#command-send")
            expect(page.locator("#command-errors")).to_contain_text("Params: not valid JSON")

            # A good one: published at once (the device is online), then followed live.
            page.fill("#command-params", '{"state": true}')
            page.fill("#command-timeout", "20")
            page.click("#command-send")
            status = page.locator("#command-current-status")
            expect(page.locator("#command-current")).to_be_visible()
            expect(page.locator("#command-errors")).to_be_empty()
            expect(status).to_have_text("executing")  # the device's first reply, back through the bridge
            command_id = page.text_content("#command-current-id")
            assert lamp.commands.get(timeout=5)["id"] == command_id

            lamp.proceed.set()
            expect(status).to_have_text("success")
            expect(page.locator("#command-current-detail")).to_have_text('result: {"state":true}')
            row = page.locator(f'#recent-commands-rows tr[data-command="{command_id}"]')
            expect(row.locator(".command-status")).to_have_text("success")
            expect(row.locator("a")).to_have_attribute("href", f"/admin/control/devicecommand/{command_id}/change/")
            assert page.js_errors == []
    finally:
        lamp.close()

    command = DeviceCommand.objects.get()  # the bad params created nothing
    assert str(command.pk) == command_id
    assert command.status == CommandStatus.SUCCESS and command.result == {"state": True}
    assert command.timeout == 20 and command.created_by == user
    assert [(r.status, r.applied) for r in command.replies.all()] == [("executing", True), ("success", True)]
