"""The live admin pages in a real browser against the real processes: Daphne serving the admin and
the WebSocket /ws/events/, the MQTT bridge and a Celery worker around a private Mosquitto with
dynamic security, and devices as paho clients logging in with the secrets the registry issued. A
device dropping off (its Last Will) raises the built-in device_offline alarm, which the dashboard
and the device's page show as it happens, and which is acknowledged from the device's page.
Headless Chromium (Debian's) driven by Playwright; screenshots of every page go to the test's tmp
dir (and to $FLUXIOT_SCREENSHOTS when set: that is how docs/screenshots/ were made)."""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path
from typing import Any

import pytest
from django.apps import apps
from django.contrib.auth.models import Permission

from alarms.models import Alarm
from devices import services as device_services
from devices.choices import ActivationState, DeviceStatus
from devices.models import Device
from fluxiot import roles
from tests.e2e.platform import device, wait_for
from tests.e2e.test_commands import CommandDevice
from tests.e2e.test_console import chromium_page
from tests.factories import DeviceFactory, DeviceGroupFactory, UserFactory

pytestmark = [pytest.mark.slow, pytest.mark.django_db(transaction=True), pytest.mark.timeout(150)]

PASSWORD = "live-pages-pw"
VIEWPORT = {"width": 1400, "height": 1000}


@pytest.fixture
def web(platform: Any, settings: Any) -> Any:
    """The platform (worker, bridge) with its web process, and a staff user of the given role."""
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.PBKDF2PasswordHasher"]  # what the server uses
    roles.sync_roles(apps)  # the role groups come from a data migration: gone after an earlier flush
    platform.env.update(COMMAND_SWEEP_SECONDS="1")
    platform.start("web")
    return platform


class Shots:
    """Screenshots of the pages: into the test's tmp dir, and $FLUXIOT_SCREENSHOTS if set."""

    def __init__(self, tmp_path: Path) -> None:
        self.dir = tmp_path / "screenshots"
        self.dir.mkdir()
        self.extra = Path(os.environ["FLUXIOT_SCREENSHOTS"]) if os.environ.get("FLUXIOT_SCREENSHOTS") else None

    def __call__(self, page: Any, name: str, full_page: bool = False) -> None:
        path = self.dir / f"{name}.png"
        page.screenshot(path=str(path), full_page=full_page)
        if self.extra:
            self.extra.mkdir(parents=True, exist_ok=True)
            shutil.copy(path, self.extra / path.name)


def log_in(page: Any, base_url: str, username: str, landing: str) -> None:
    page.set_viewport_size(VIEWPORT)
    page.goto(f"{base_url}/admin/login/?next={landing}")
    page.fill("#id_username", username)
    page.fill("#id_password", PASSWORD)
    page.click("input[type=submit]")
    page.wait_for_url(f"**{landing}")


def wait_live(page: Any) -> None:
    """Until the page's WebSocket is open (the server accepted the session)."""
    page.wait_for_function("document.documentElement.dataset.liveState === 'open'")


def test_dashboard_and_device_page_follow_a_real_device(web, tmp_path):
    from playwright.sync_api import expect

    shots = Shots(tmp_path)
    UserFactory(username="chief", password=PASSWORD, is_staff=True, roles=[roles.ADMINISTRATOR])
    DeviceFactory(id="e2e-s1", status=DeviceStatus.ONLINE)
    DeviceFactory(id="e2e-s2", status=DeviceStatus.ONLINE)
    DeviceFactory(id="e2e-cam", device_type="camera", status=DeviceStatus.FAULT)
    DeviceFactory(id="e2e-thermo", device_type="actuator", name="Thermostat")
    secret = device_services.activate_device("e2e-thermo", actor=None)
    thermo = CommandDevice(web.broker, "e2e-thermo", secret)  # MQTT 5: takes commands, answers success
    try:
        with chromium_page() as page:
            # The dashboard: the counts as they are.
            log_in(page, web.base_url, "chief", "/admin/")
            expect(page.locator("#fleet-status-caption")).to_have_text("Devices by status (4 in all)")
            online = page.locator("td.status-count[data-status=online]")
            expect(online).to_have_text("2")
            expect(page.locator("td.status-count[data-status=offline]")).to_have_text("1")
            expect(page.locator("td.status-count[data-status=fault]")).to_have_text("1")
            expect(page.locator('td.type-count[data-type="camera"][data-status="fault"]')).to_have_text("1")
            expect(page.locator('td.type-total[data-type="sensor"]')).to_have_text("2")
            expect(page.locator("[data-summary=online_ratio]").first).to_have_text("50 %")
            wait_live(page)

            # A real device publishes: the worker marks it online, and the page follows without a reload.
            thermo.telemetry({"temperature": 21.5, "humidity": 40})
            expect(online).to_have_text("3", timeout=20_000)
            expect(page.locator("td.status-count[data-status=offline]")).to_have_text("0")
            expect(page.locator('td.type-count[data-type="actuator"][data-status="online"]')).to_have_text("1")
            expect(page.locator("[data-summary=online_ratio]").first).to_have_text("75 %")
            latest = page.locator('#latest-events-rows tr[data-type="device.status_changed"]')
            expect(latest.and_(page.locator('[data-device="e2e-thermo"]'))).to_contain_text("offline → online")
            # Messages per second, counted from the telemetry events the page received.
            page.wait_for_function("parseFloat(document.getElementById('messages-per-second').textContent) > 0")
            shots(page, "dashboard", full_page=True)

            # The device's page: latest values and a chart per numeric key, from the API first...
            device_page = "/admin/devices/device/e2e-thermo/change/"
            page.goto(web.base_url + device_page)
            temperature = page.locator('#latest-values-rows tr[data-key="temperature"] td.flux-value')
            expect(temperature).to_have_text("21.5")
            chart = page.locator('#charts .flux-chart-card[data-key="temperature"]')
            expect(chart).to_have_attribute("data-last", "21.5")
            expect(page.locator("#device-live-status")).to_have_text("Online")
            expect(page.locator("#status-changes-rows")).to_contain_text("offline → online")
            wait_live(page)

            # ...then live: new values over MQTT reach the table and the charts without a reload.
            for value in (22.75, 23.25):
                thermo.telemetry({"temperature": value, "humidity": 41})
                expect(temperature).to_have_text(str(value))
                expect(chart).to_have_attribute("data-last", str(value))
            points = page.evaluate("window.fluxDevicePage.points('temperature').map(p => p.y)")
            assert points[-3:] == [21.5, 22.75, 23.25], points
            expect(page.locator('#charts .flux-chart-card[data-key="humidity"]')).to_have_attribute("data-last", "41")

            # The range picker: another range reloads the history from the API.
            page.click('#chart-range button[data-range="900"]')
            expect(page.locator("#live-telemetry")).to_have_attribute("data-range", "900")
            expect(chart).to_have_attribute("data-loading", "false")
            expect(chart).to_have_attribute("data-last", "23.25")
            assert page.evaluate("window.fluxDevicePage.points('temperature').length") == len(points)

            # A command from the console reaches the device, and its status comes back to the page.
            expect(page.locator("#command-type")).to_be_enabled()
            page.select_option("#command-type", "set_state")
            page.fill("#command-params", '{"state": true}')
            page.click("#command-send")
            command = thermo.next_command()
            assert command["type"] == "set_state" and command["params"] == {"state": True}
            expect(page.locator("#command-current-id")).to_have_text(command["id"])
            expect(page.locator("#command-current-status")).to_have_text("success")
            row = page.locator(f'#recent-commands-rows tr[data-command="{command["id"]}"] .command-status')
            expect(row).to_have_text("success")

            # A status change made elsewhere (here: the API, by this user) shows at once.
            answer = page.evaluate(
                """async (url) => (await fetch(url, {method: "POST", credentials: "same-origin",
                     headers: {"Content-Type": "application/json", "X-CSRFToken": FluxLive.csrfToken()},
                     body: JSON.stringify({status: "maintenance", reason: "filter swap"})})).status""",
                "/api/v1/devices/e2e-thermo/status/",
            )
            assert answer == 200
            expect(page.locator("#device-live-status")).to_have_text("Maintenance")
            expect(page.locator("#status-changes-rows tr").first).to_contain_text("online → maintenance")
            expect(page.locator("#status-timeline span[data-status=maintenance]")).to_have_count(1)
            shots(page, "device", full_page=True)
            assert page.js_errors == []
    finally:
        thermo.close()
    assert Device.objects.get(pk="e2e-thermo").status == DeviceStatus.MAINTENANCE


def test_group_tree_and_live_events_filter_and_pause(web, tmp_path):
    from playwright.sync_api import expect

    shots = Shots(tmp_path)
    UserFactory(username="watcher", password=PASSWORD, is_staff=True, roles=[roles.VIEWER])
    plant = DeviceGroupFactory(name="Plant")
    line = DeviceGroupFactory(name="Line 1", parent=plant)
    DeviceFactory(id="e2e-idle", group=plant, activation_state=ActivationState.REGISTERED)
    with device(web.broker, "e2e-ev-a") as a, device(web.broker, "e2e-ev-b") as b:
        Device.objects.filter(pk__in=["e2e-ev-a", "e2e-ev-b"]).update(group=line)
        with chromium_page() as page:
            # The group tree: counts include the groups below; they follow devices coming online.
            log_in(page, web.base_url, "watcher", "/admin/live/groups/")
            plant_row = page.locator(f'#group-tree-rows tr[data-group="{plant.pk}"]')
            line_row = page.locator(f'#group-tree-rows tr[data-group="{line.pk}"]')
            expect(plant_row.locator(".group-total")).to_have_text("3")
            expect(plant_row.locator(".group-direct")).to_have_text("1")
            expect(plant_row.locator(".group-online")).to_have_text("0")
            wait_live(page)
            a.publish("telemetry", {"temperature": 1})
            b.publish("telemetry", {"temperature": 2})
            expect(line_row.locator(".group-online")).to_have_text("2", timeout=20_000)
            expect(line_row.locator(".group-ratio-text")).to_have_text("100 %")
            expect(plant_row.locator(".group-online")).to_have_text("2")
            expect(plant_row.locator(".group-ratio-text")).to_have_text("67 %")
            shots(page, "group-tree")

            # The live event page: everything at first.
            page.goto(web.base_url + "/admin/live/events/")
            events = page.locator("#live-events")
            expect(events).to_have_attribute("data-subscribed", "events-1")
            rows = page.locator("#events-rows tr")
            a.publish("telemetry", {"temperature": 10, "humidity": 55})
            first = page.locator('#events-rows tr[data-device="e2e-ev-a"][data-type="telemetry.received"]')
            expect(first).to_contain_text("humidity=55, temperature=10")

            # Filtered by device and type: the server sends only b's telemetry.
            page.fill("#filter-devices", "e2e-ev-b")
            page.check('#filter-types input[value="telemetry.received"]')
            page.click("#filters-apply")
            expect(events).to_have_attribute("data-subscribed", "events-2")
            assert "device=e2e-ev-b" in page.url and "type=telemetry.received" in page.url
            page.click("#events-clear")
            expect(rows).to_have_count(0)
            a.publish("telemetry", {"temperature": 11})
            b.publish("telemetry", {"temperature": 20})
            b.publish("telemetry", {"temperature": 21})
            expect(rows.first).to_contain_text("temperature=21")
            assert set(rows.evaluate_all("rows => rows.map(r => r.dataset.device)")) == {"e2e-ev-b"}
            assert set(rows.evaluate_all("rows => rows.map(r => r.dataset.type)")) == {"telemetry.received"}
            shown = rows.count()

            # Paused: new events are held, not shown; resumed: they appear and the list goes on.
            page.click("#events-pause")
            expect(events).to_have_attribute("data-paused", "true")
            b.publish("telemetry", {"temperature": 22})
            expect(events).to_have_attribute("data-held", "1")
            expect(page.locator("#events-held")).to_have_text("1 held while paused")
            assert rows.count() == shown and "temperature=22" not in page.text_content("#events-rows")
            shots(page, "live-events-paused")
            page.click("#events-pause")
            expect(rows.first).to_contain_text("temperature=22")
            expect(events).to_have_attribute("data-held", "0")
            b.publish("telemetry", {"temperature": 23})
            expect(rows.first).to_contain_text("temperature=23")
            assert rows.count() == shown + 2

            # Back to every event: others reach the list again.
            page.fill("#filter-devices", "")
            page.uncheck('#filter-types input[value="telemetry.received"]')
            page.click("#filters-apply")
            expect(events).to_have_attribute("data-subscribed", "events-3")
            a.publish("telemetry", {"temperature": 12, "pressure": 1013})
            expect(rows.first).to_contain_text("pressure=1013")
            shots(page, "live-events")
            assert page.js_errors == []


def test_an_offline_device_raises_an_alarm_seen_live_and_acknowledged_from_its_page(web, tmp_path):
    from playwright.sync_api import expect

    shots = Shots(tmp_path)
    duty = UserFactory(username="duty", password=PASSWORD, is_staff=True, roles=[roles.OPERATOR])
    # And may raise alarms by hand (the API's POST alarms/), for the live event page's severity filter.
    duty.user_permissions.add(Permission.objects.get(codename="add_alarm", content_type__app_label="alarms"))
    with device(web.broker, "e2e-pump") as pump:
        pump.publish("telemetry", {"pressure": 2.5}).wait_for_publish(10)
        wait_for(lambda: Device.objects.get(pk="e2e-pump").status == DeviceStatus.ONLINE, 20, "the pump online")
        with chromium_page() as dashboard:
            # The dashboard: no active alarm yet.
            log_in(dashboard, web.base_url, "duty", "/admin/")
            major = dashboard.locator('#fleet-alarms td.alarm-count[data-severity="major"]')
            expect(major).to_have_text("0")
            expect(dashboard.locator("#fleet-alarms td.alarm-total")).to_have_text("0")
            wait_live(dashboard)

            # The device's page, side by side in the same session (a second tab: the same cookies),
            # its alarm list empty.
            tab = dashboard.context.browser.new_context()
            tab.add_cookies(dashboard.context.cookies())
            page = tab.new_page()
            page.set_default_timeout(10_000)
            page.js_errors = []
            page.on("pageerror", lambda error: page.js_errors.append(str(error)))
            page.set_viewport_size(VIEWPORT)
            page.goto(web.base_url + "/admin/devices/device/e2e-pump/change/")
            alarms = page.locator("#device-alarms")
            expect(alarms).to_have_attribute("data-loaded", re.compile(r"\d+"))
            expect(page.locator("#device-alarms-rows")).to_contain_text("No alarms.")
            expect(page.locator("#device-alarms-summary")).to_have_text("No active alarm.")
            wait_live(page)

            # The pump drops off without a DISCONNECT: the broker publishes its Last Will, the worker
            # marks it offline, and the built-in check raises device_offline (major).
            pump.kill()
            row = page.locator('#device-alarms-rows tr[data-type="device_offline"]')
            expect(row).to_have_attribute("data-status", "active_unacknowledged", timeout=30_000)
            expect(row.locator(".alarm-badge[data-severity]")).to_have_text("Major")
            expect(row.locator(".alarm-badge[data-status]")).to_have_text("Active, unacknowledged")
            expect(page.locator("#device-alarms-summary")).to_have_text("1 active (1 unacknowledged, worst major)")
            expect(page.locator("#device-live-status")).to_have_text("Offline")
            # ...and the dashboard, without a reload: the count and the latest events.
            expect(major).to_have_text("1", timeout=20_000)
            expect(dashboard.locator("#fleet-alarms td.alarm-total")).to_have_text("1")
            raised = dashboard.locator('#latest-events-rows tr[data-type="alarm.raised"][data-device="e2e-pump"]')
            expect(raised).to_contain_text("device_offline major raised")
            shots(dashboard, "dashboard-alarm", full_page=True)

            # Acknowledged from the device's page: the button goes, the alarm stays active.
            expect(row.locator('button[data-action="clear"]')).to_be_visible()
            row.locator('button[data-action="ack"]').click()
            expect(row).to_have_attribute("data-status", "active_acknowledged")
            expect(row.locator('button[data-action="ack"]')).to_have_count(0)
            expect(row.locator(".alarm-badge[data-status]")).to_have_text("Active, acknowledged")
            expect(page.locator("#device-alarms-summary")).to_have_text("1 active (0 unacknowledged, worst major)")
            expect(page.locator("#device-alarms-errors li")).to_have_count(0)
            acked = dashboard.locator('#latest-events-rows tr[data-type="alarm.acknowledged"][data-device="e2e-pump"]')
            expect(acked).to_contain_text("device_offline major acknowledged")
            expect(major).to_have_text("1")  # acknowledged alarms are still active
            shots(page, "device-alarm", full_page=True)

            # The live event page filtered by a severity: only alarm events of that severity.
            dashboard.goto(web.base_url + "/admin/live/events/")
            events = dashboard.locator("#live-events")
            expect(events).to_have_attribute("data-subscribed", "events-1")
            dashboard.select_option("#filter-severity", "critical")
            dashboard.click("#filters-apply")
            expect(events).to_have_attribute("data-subscribed", "events-2")
            assert "severity=critical" in dashboard.url
            for alarm_type, severity in (("e2e_minor", "minor"), ("e2e_hot", "critical")):
                status = dashboard.evaluate(
                    """async (body) => (await fetch("/api/v1/alarms/", {method: "POST", credentials: "same-origin",
                         headers: {"Content-Type": "application/json", "X-CSRFToken": FluxLive.csrfToken()},
                         body: JSON.stringify(body)})).status""",
                    {"device": "e2e-pump", "type": alarm_type, "severity": severity},
                )
                assert status == 201, (alarm_type, status)
            rows = dashboard.locator("#events-rows tr")
            expect(rows.first).to_contain_text("e2e_hot critical raised")
            assert rows.evaluate_all("rows => rows.map(r => r.dataset.severity)") == ["critical"]
            # Meanwhile the device's page lists them too, the worst first among the active ones' summary.
            expect(page.locator("#device-alarms-summary")).to_have_text("3 active (2 unacknowledged, worst critical)")
            assert dashboard.js_errors == [] and page.js_errors == []
    alarm = Alarm.objects.get(device_id="e2e-pump", type="device_offline")
    assert alarm.status == "active_acknowledged" and alarm.acknowledged_by.username == "duty"
    assert alarm.source == "check:device_offline" and alarm.severity == "major"
