"""The admin's live pages through Django's test client: the fleet dashboard (the admin index), its
cached summary with the active alarms per severity, the live event page, the group tree, and the
live parts of a device's page (its alarms among them)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from django.conf import settings
from django.contrib.staticfiles import finders
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.urls import reverse

from alarms import services as alarm_services
from alarms.choices import AlarmSeverity
from devices.choices import DeviceStatus, DeviceType
from fluxiot import admin as flux_admin
from fluxiot import roles
from tests.factories import DeviceFactory, DeviceGroupFactory, UserFactory

pytestmark = pytest.mark.django_db

INDEX = reverse("admin:index")
SUMMARY = reverse("admin:fleet_summary")
EVENTS = reverse("admin:live_events")
GROUPS = reverse("admin:live_groups")
LOGIN = reverse("admin:login")
ALARMS = reverse("admin:alarms_alarm_changelist")
SEVERITIES = ["critical", "major", "minor", "warning", "indeterminate"]


@pytest.fixture
def devices_only_staff(client):
    """Staff who may view devices (and groups) but not alarms."""
    from django.contrib.auth.models import Permission

    user = UserFactory(username="devices-only", is_staff=True)
    user.user_permissions.add(
        *Permission.objects.filter(codename__in=["view_device", "view_devicegroup"], content_type__app_label="devices")
    )
    client.force_login(user)
    return client


@pytest.fixture
def bare_staff(client):
    """Staff (may enter the admin) but without devices.view_device."""
    client.force_login(UserFactory(username="bare", is_staff=True))
    return client


def fleet(**statuses_by_type):
    """Devices: fleet(sensor={"online": 2}, camera={"fault": 1})."""
    for device_type, statuses in statuses_by_type.items():
        for status, n in statuses.items():
            for _ in range(n):
                DeviceFactory(device_type=device_type, status=status)


# --- The dashboard ----------------------------------------------------------------------------------


def test_dashboard_counts_by_status_and_type_and_online_ratio(viewer_staff):
    fleet(sensor={"online": 3, "offline": 1}, camera={"fault": 1, "online": 1}, gateway={"maintenance": 2})
    response = viewer_staff.get(INDEX)
    assert response.status_code == 200
    summary = response.context["fleet"]
    assert summary["total"] == 8 and summary["online"] == 4 and summary["online_ratio"] == 0.5
    assert summary["by_status"] == {"online": 4, "offline": 1, "fault": 1, "maintenance": 2}
    assert summary["by_type"]["sensor"] == {"online": 3, "offline": 1, "fault": 0, "maintenance": 0, "total": 4}
    assert summary["by_type"]["camera"]["total"] == 2 and summary["by_type"]["actuator"]["total"] == 0

    html = response.content.decode()
    assert "Devices by status (8 in all)" in html
    assert 'data-status="online">4<' in html and 'data-status="maintenance">2<' in html
    assert re.search(r'data-type="sensor" data-status="online">3<', html)
    assert re.search(r'class="flux-num type-total" data-type="gateway">2<', html)
    assert 'data-summary="online_ratio">50 %<' in html
    # The live machinery, served from our own static files (no CDN).
    assert "/static/fluxiot/vendor/chart.umd.min.js" in html and "/static/fluxiot/dashboard.js" in html
    assert (
        json.loads(re.search(r'<script id="fleet-summary" type="application/json">(.*?)</script>', html)[1])["total"]
        == 8
    )
    # No alarm yet: the panel is there, every severity at 0.
    assert 'id="fleet-alarms"' in html
    assert summary["alarms"] == {**dict.fromkeys(SEVERITIES, 0), "total": 0}
    # The stock app list and the live pages stay reachable from the index.
    assert reverse("admin:devices_device_changelist") in html
    assert EVENTS in html and GROUPS in html


def test_an_empty_fleet_has_no_ratio(viewer_staff):
    response = viewer_staff.get(INDEX)
    assert response.context["fleet"]["online_ratio"] is None
    assert 'data-summary="online_ratio">–<' in response.content.decode()


def test_the_dashboard_counts_with_a_bounded_number_of_queries_whatever_the_fleet_size(
    viewer_staff, django_assert_max_num_queries
):
    fleet(sensor={"online": 2}, camera={"offline": 1})
    viewer_staff.get(INDEX)  # the session and permission caches of the client, warm
    flux_admin.clear_cached_summaries()
    with django_assert_max_num_queries(8) as small:
        viewer_staff.get(INDEX)
    fleet(sensor={"online": 60, "fault": 20}, actuator={"offline": 40}, industrial={"maintenance": 30})
    flux_admin.clear_cached_summaries()
    with django_assert_max_num_queries(8) as large:
        response = viewer_staff.get(INDEX)
    assert len(large.captured_queries) == len(small.captured_queries)
    assert response.context["fleet"]["total"] == 153
    # One grouped count over the devices: never a row per device.
    device_queries = [q["sql"] for q in large.captured_queries if '"devices_device"' in q["sql"]]
    assert len(device_queries) == 1 and "GROUP BY" in device_queries[0]


def test_the_counts_are_cached_for_a_few_seconds(viewer_staff):
    fleet(sensor={"online": 1})
    assert viewer_staff.get(SUMMARY).json()["total"] == 1
    DeviceFactory(status=DeviceStatus.ONLINE)
    with CaptureQueriesContext(connection) as queries:
        cached = viewer_staff.get(SUMMARY).json()
    assert cached["total"] == 1  # still the cached aggregate
    assert not [q for q in queries.captured_queries if '"devices_device"' in q["sql"]]
    flux_admin.clear_cached_summaries()
    fresh = viewer_staff.get(SUMMARY).json()
    assert fresh["total"] == 2 and fresh["online"] == 2 and fresh["computed_at"] >= cached["computed_at"]
    assert fresh["ttl"] == flux_admin.cache_seconds()


def test_summary_and_live_pages_refuse_anonymous_users(client):
    for url in (SUMMARY, EVENTS, GROUPS):
        response = client.get(url)
        assert response.status_code == 302 and response["Location"].startswith(LOGIN), url


def test_summary_and_live_pages_refuse_users_without_view_device(bare_staff):
    for url in (SUMMARY, EVENTS, GROUPS, GROUPS + "?format=json"):
        assert bare_staff.get(url).status_code == 403, url
    # The index still opens, without the dashboard or the live section.
    response = bare_staff.get(INDEX)
    assert response.status_code == 200
    assert "fleet" not in response.context and 'id="fleet-dashboard"' not in response.content.decode()
    assert EVENTS not in response.content.decode()


def test_the_live_section_is_in_the_navigation(viewer_staff):
    DeviceFactory(id="nav-1")
    html = viewer_staff.get(reverse("admin:devices_device_changelist")).content.decode()
    sidebar = html[html.index('id="nav-sidebar"') :]
    assert f'href="{EVENTS}"' in sidebar and f'href="{GROUPS}"' in sidebar


# --- Alarms on the dashboard --------------------------------------------------------------------------


def raise_some_alarms():
    """Active: critical 1, major 2 (one acknowledged), minor 0 (its only alarm cleared), warning 1,
    indeterminate 1; a repeat and an escalation count once, as the one alarm they are."""
    pump, fan, door = DeviceFactory(id="pump"), DeviceFactory(id="fan"), DeviceFactory(id="door")
    alarm_services.raise_alarm(pump, "overheat", AlarmSeverity.MINOR)
    alarm_services.raise_alarm(pump, "overheat", AlarmSeverity.CRITICAL)  # escalated: now critical
    alarm_services.raise_alarm(pump, "device_offline", AlarmSeverity.MAJOR)
    acked = alarm_services.raise_alarm(fan, "device_offline", AlarmSeverity.MAJOR)
    alarm_services.acknowledge(acked)
    alarm_services.raise_alarm(fan, "vibration", AlarmSeverity.WARNING)
    alarm_services.raise_alarm(fan, "vibration", AlarmSeverity.WARNING)  # repeated
    alarm_services.raise_alarm(door, "unknown_state", AlarmSeverity.INDETERMINATE)
    cleared = alarm_services.raise_alarm(door, "low_battery", AlarmSeverity.MINOR)
    alarm_services.clear(cleared)
    alarm_services.raise_alarm(door, "tamper", AlarmSeverity.CRITICAL)
    alarm_services.clear_alarm(door, "tamper")
    return {"critical": 1, "major": 2, "minor": 0, "warning": 1, "indeterminate": 1}


def test_dashboard_shows_the_active_alarms_per_severity_with_links(viewer_staff):
    expected = raise_some_alarms()
    response = viewer_staff.get(INDEX)
    assert response.context["fleet"]["alarms"] == {**expected, "total": 5}
    assert [(row["severity"], row["label"], row["count"]) for row in response.context["alarm_rows"]] == [
        ("critical", "Critical", 1),
        ("major", "Major", 2),
        ("minor", "Minor", 0),
        ("warning", "Warning", 1),
        ("indeterminate", "Indeterminate", 1),
    ]
    html = response.content.decode()
    panel = html[html.index('id="fleet-alarms"') :]
    panel = panel[: panel.index("</div>")]
    for severity, n in expected.items():
        assert f'class="flux-num alarm-count" data-severity="{severity}">{n}<' in panel, severity
        # Each links to the alarm list filtered by that severity, active alarms only.
        assert f'href="{ALARMS}?severity__exact={severity}&amp;active=yes"' in panel, severity
    assert 'class="flux-num alarm-total">5<' in panel and f'href="{ALARMS}?active=yes"' in panel
    # The embedded summary (the page's starting point) has them too.
    embedded = json.loads(re.search(r'<script id="fleet-summary" type="application/json">(.*?)</script>', html)[1])
    assert embedded["alarms"]["major"] == 2

    # The links lead to what they say.
    listed = viewer_staff.get(f"{ALARMS}?severity__exact=major&active=yes")
    assert listed.status_code == 200 and listed.context["cl"].result_count == 2


def test_the_alarm_counts_are_in_the_cached_summary(viewer_staff):
    raise_some_alarms()
    assert viewer_staff.get(SUMMARY).json()["alarms"]["critical"] == 1
    alarm_services.raise_alarm("fan", "overheat", AlarmSeverity.CRITICAL)
    assert viewer_staff.get(SUMMARY).json()["alarms"]["critical"] == 1  # cached
    flux_admin.clear_cached_summaries()
    fresh = viewer_staff.get(SUMMARY).json()["alarms"]
    assert fresh["critical"] == 2 and fresh["total"] == 6


def test_no_alarm_panel_or_counts_without_view_alarm(devices_only_staff):
    raise_some_alarms()
    response = devices_only_staff.get(INDEX)
    assert response.status_code == 200 and response.context["fleet"]["total"] == 3
    assert "alarms" not in response.context["fleet"] and "alarm_rows" not in response.context
    html = response.content.decode()
    assert 'id="fleet-dashboard"' in html and 'id="fleet-alarms"' not in html
    assert '"alarms"' not in re.search(r'<script id="fleet-summary" type="application/json">(.*?)</script>', html)[1]
    assert "alarms" not in devices_only_staff.get(SUMMARY).json()
    # The shared cache still holds them for those who may see them.
    assert "alarms" in flux_admin.fleet_summary()


def test_without_an_alarms_app_there_is_no_alarm_panel(viewer_staff, monkeypatch):
    DeviceFactory(id="quiet")
    monkeypatch.setattr(flux_admin, "alarms_installed", lambda: False)
    html = viewer_staff.get(INDEX).content.decode()
    assert 'id="fleet-dashboard"' in html and 'id="fleet-alarms"' not in html
    assert "alarms" not in viewer_staff.get(SUMMARY).json()
    assert (
        'id="device-alarms"'
        not in viewer_staff.get(reverse("admin:devices_device_change", args=["quiet"])).content.decode()
    )
    events_page = viewer_staff.get(EVENTS).content.decode()
    assert 'id="filter-severity"' not in events_page and 'value="alarm.raised"' not in events_page


# --- The live event page ----------------------------------------------------------------------------


def test_live_event_page_renders_its_filters_for_a_viewer(viewer_staff):
    site = DeviceGroupFactory(name="Site")
    DeviceGroupFactory(name="Hall", parent=site)
    response = viewer_staff.get(EVENTS + "?device=a,b&type=device.status_changed&type=bogus&group=" + str(site.pk))
    assert response.status_code == 200
    html = response.content.decode()
    assert 'id="live-events"' in html and 'data-ws-path="/ws/events/"' in html
    assert 'id="filter-devices"' in html and 'value="a,b"' in html
    assert f'<option value="{site.pk}" selected>Site</option>' in html
    assert "\u2003Hall</option>" in html  # indented under its parent
    assert '<input type="checkbox" value="device.status_changed" checked>' in html
    assert '<input type="checkbox" value="telemetry.received">' in html
    assert "bogus" not in html
    assert 'id="events-pause"' in html and 'id="buffer-size"' in html
    # Alarm events and their severities: all five, worst first.
    for event_type in ("alarm.raised", "alarm.updated", "alarm.acknowledged", "alarm.cleared"):
        assert f'<input type="checkbox" value="{event_type}">' in html, event_type
    select = html[html.index('id="filter-severity"') : html.index("</select>", html.index('id="filter-severity"'))]
    assert re.findall(r'<option value="(\w*)"', select) == ["", *SEVERITIES]
    assert "/static/fluxiot/events.js" in html


def test_live_event_page_keeps_a_chosen_severity(viewer_staff):
    html = viewer_staff.get(EVENTS + "?severity=minor&type=alarm.raised").content.decode()
    assert '<option value="minor" selected>Minor</option>' in html
    assert '<input type="checkbox" value="alarm.raised" checked>' in html


def test_live_event_page_offers_alarms_only_to_who_may_see_them(devices_only_staff):
    html = devices_only_staff.get(EVENTS).content.decode()
    assert '<input type="checkbox" value="device.status_changed">' in html
    assert 'value="alarm.raised"' not in html and 'id="filter-severity"' not in html
    # Nor command events (control.view_devicecommand): ticking only those would be refused.
    assert 'value="command.status_changed"' not in html


# --- The group tree ---------------------------------------------------------------------------------


def test_group_tree_counts_include_descendants_with_online_ratio(viewer_staff):
    hq = DeviceGroupFactory(name="HQ")
    floor = DeviceGroupFactory(name="Floor", parent=hq)
    room = DeviceGroupFactory(name="Room", parent=floor)
    empty = DeviceGroupFactory(name="Empty", parent=hq)
    DeviceFactory(group=hq, status=DeviceStatus.ONLINE)
    DeviceFactory(group=floor, status=DeviceStatus.OFFLINE)
    DeviceFactory(group=room, status=DeviceStatus.ONLINE)
    DeviceFactory(group=room, status=DeviceStatus.FAULT)
    DeviceFactory(group=None, status=DeviceStatus.ONLINE)
    DeviceFactory(group=None, status=DeviceStatus.OFFLINE)

    tree = viewer_staff.get(GROUPS + "?format=json").json()
    nodes = {node["name"]: node for node in tree["groups"]}
    assert [node["name"] for node in tree["groups"]] == ["HQ", "Floor", "Room", "Empty"]  # tree order
    assert {name: (n["direct"], n["total"], n["online"], n["online_ratio"]) for name, n in nodes.items()} == {
        "HQ": (1, 4, 2, 0.5),
        "Floor": (1, 3, 1, 0.3333),
        "Room": (2, 2, 1, 0.5),
        "Empty": (0, 0, 0, None),
    }
    assert nodes["HQ"]["by_status"] == {"online": 2, "offline": 1, "fault": 1, "maintenance": 0}
    assert [(n["depth"], n["parent"], n["children"]) for n in tree["groups"]] == [
        (0, None, 2),
        (1, hq.pk, 1),
        (2, floor.pk, 0),
        (1, hq.pk, 0),
    ]
    assert tree["ungrouped"]["total"] == 2 and tree["ungrouped"]["online_ratio"] == 0.5

    html = viewer_staff.get(GROUPS).content.decode()
    row = html[html.index(f'data-group="{hq.pk}"') :]
    row = row[: row.index("</tr>")]
    assert 'class="flux-num group-direct">1<' in row and 'class="flux-num group-total">4<' in row
    assert 'class="flux-num group-online">2<' in row and 'class="group-ratio-text">50 %<' in row
    assert f"?group__id__exact={hq.pk}" in row
    empty_row = html[html.index(f'data-group="{empty.pk}"') :]
    assert 'class="group-ratio-text">–<' in empty_row[: empty_row.index("</tr>")]


def test_group_tree_with_a_bounded_number_of_queries(viewer_staff, django_assert_max_num_queries):
    root = DeviceGroupFactory(name="root")
    viewer_staff.get(GROUPS)
    counts = []
    for size in (2, 25):
        parent = root
        for i in range(size):
            parent = DeviceGroupFactory(name=f"g{size}-{i}", parent=parent if i % 3 else root)
            DeviceFactory(group=parent, status=DeviceStatus.ONLINE if i % 2 else DeviceStatus.OFFLINE)
        flux_admin.clear_cached_summaries()
        with django_assert_max_num_queries(8) as captured:
            assert viewer_staff.get(GROUPS).status_code == 200
        counts.append(len(captured.captured_queries))
    assert counts[0] == counts[1]


def test_group_tree_needs_the_group_permission_too(client):
    from django.contrib.auth.models import Permission

    user = UserFactory(username="devices-only", is_staff=True)
    user.user_permissions.add(Permission.objects.get(codename="view_device", content_type__app_label="devices"))
    client.force_login(user)
    assert client.get(EVENTS).status_code == 200
    assert client.get(GROUPS).status_code == 403
    sidebar = client.get(reverse("admin:devices_device_changelist")).content.decode()
    assert f'href="{EVENTS}"' in sidebar and f'href="{GROUPS}"' not in sidebar


# --- The device page --------------------------------------------------------------------------------


def test_device_page_has_the_live_parts_next_to_the_console(client):
    client.force_login(UserFactory(username="ops", is_staff=True, roles=[roles.OPERATOR]))
    DeviceFactory(id="probe_1", device_type=DeviceType.SENSOR, status=DeviceStatus.ONLINE)
    html = client.get(reverse("admin:devices_device_change", args=["probe_1"])).content.decode()
    assert 'id="live-telemetry"' in html and 'data-device="probe_1"' in html
    assert 'data-metrics-url="/api/v1/devices/probe_1/metrics/"' in html
    assert 'data-range-url="/api/v1/telemetry/"' in html and 'data-status-url="/api/v1/devices/probe_1/status/"' in html
    for part in ('id="latest-values-rows"', 'id="charts"', 'id="chart-range"', 'id="status-timeline"'):
        assert part in html
    assert 'id="command-console"' in html and "/static/control/console.js" in html
    assert "/static/fluxiot/device.js" in html and "/static/fluxiot/vendor/chart.umd.min.js" in html
    # The device's alarms, from the alarms API; an Operator may acknowledge and clear them.
    assert 'id="device-alarms"' in html and "/static/fluxiot/alarms.js" in html
    assert 'data-list-url="/api/v1/alarms/"' in html
    assert 'data-can-ack="true"' in html and 'data-can-clear="true"' in html
    assert f'href="{ALARMS}?device__id__exact=probe_1"' in html
    # Nothing of the live parts is submitted with the device's form.
    live = html[html.index('id="live-telemetry"') : html.index("</fieldset>", html.index('id="live-telemetry"'))]
    assert " name=" not in live


def test_device_page_alarm_section_follows_the_alarm_permissions(viewer_staff, client):
    DeviceFactory(id="probe_2")
    url = reverse("admin:devices_device_change", args=["probe_2"])
    # A Viewer sees the alarms, without the buttons.
    html = viewer_staff.get(url).content.decode()
    assert 'id="device-alarms"' in html and 'data-can-ack="false"' in html and 'data-can-clear="false"' in html
    # Without alarms.view_alarm: no section at all.
    from django.contrib.auth.models import Permission

    user = UserFactory(username="devices-only", is_staff=True)
    user.user_permissions.add(*Permission.objects.filter(content_type__app_label="devices"))
    client.force_login(user)
    response = client.get(url)
    assert response.status_code == 200 and 'id="device-alarms"' not in response.content.decode()


def test_the_device_page_reads_its_alarms_from_the_api_as_it_asks(client):
    """The requests alarms.js makes: the device's active alarms, then its latest cleared ones; and
    the acknowledge and clear calls, allowed to an Operator."""
    client.force_login(UserFactory(username="ops", is_staff=True, roles=[roles.OPERATOR]))
    raise_some_alarms()
    other = DeviceFactory(id="fan-2")
    alarm_services.raise_alarm(other, "overheat", AlarmSeverity.MAJOR)
    query = "/api/v1/alarms/?device=pump&page_size=20&active={}&ordering={}"
    active = client.get(query.format("true", "-started_at")).json()
    assert active["count"] == 2 and {a["type"] for a in active["results"]} == {"overheat", "device_offline"}
    assert {a["device"] for a in active["results"]} == {"pump"}
    door = client.get(query.replace("pump", "door").format("false", "-ended_at")).json()
    assert [a["type"] for a in door["results"]] == ["tamper", "low_battery"]  # the latest cleared first
    alarm_id = active["results"][0]["id"]
    headers = {"content_type": "application/json"}
    acked = client.post(f"/api/v1/alarms/{alarm_id}/ack/", "{}", **headers)
    assert acked.status_code == 200 and acked.json()["status"] == "active_acknowledged"
    assert client.post(f"/api/v1/alarms/{alarm_id}/ack/", "{}", **headers).status_code == 409
    cleared = client.post(f"/api/v1/alarms/{alarm_id}/clear/", '{"reason": "Cleared from the device page."}', **headers)
    assert cleared.status_code == 200 and cleared.json()["status"] == "cleared_acknowledged"


def test_no_live_parts_on_the_add_page(viewer_staff, client):
    client.force_login(UserFactory(username="boss", is_staff=True, roles=[roles.ADMINISTRATOR]))
    assert 'id="live-telemetry"' not in client.get(reverse("admin:devices_device_add")).content.decode()


# --- Static files: our own, nothing from elsewhere ----------------------------------------------------


def test_static_files_exist_and_nothing_comes_from_a_cdn():
    for name in ("live.js", "dashboard.js", "device.js", "alarms.js", "events.js", "groups.js", "live.css"):
        assert finders.find(f"fluxiot/{name}"), name
    chart = Path(finders.find("fluxiot/vendor/chart.umd.min.js"))
    assert chart.read_text()[:60].count("Chart.js v4")
    assert "sourceMappingURL" not in chart.read_text()[-200:]  # no map to fetch or collect
    assert "MIT License" in Path(finders.find("fluxiot/vendor/chart.js.LICENSE.md")).read_text()
    templates = Path(settings.BASE_DIR, "templates", "admin")
    for template in [templates / "index.html", *templates.glob("live/*.html"), *templates.glob("devices/**/*.html")]:
        assert not re.search(r"""(src|href)=["']https?://""", template.read_text()), template
