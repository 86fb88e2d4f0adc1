"""Admin pages of device commands (control/admin.py) and the command console on a device's page."""

from __future__ import annotations

import re
import uuid
from datetime import timedelta

import pytest
from django.contrib.admin.helpers import ACTION_CHECKBOX_NAME
from django.contrib.messages import get_messages
from django.contrib.staticfiles import finders
from django.urls import reverse
from django.utils import timezone

from control.choices import CommandStatus
from control.models import CommandBatch, CommandReply, DeviceCommand
from devices.choices import ActivationState, DeviceStatus
from tests.factories import DeviceFactory, UserFactory

pytestmark = pytest.mark.django_db

COMMANDS = reverse("admin:control_devicecommand_changelist")
BATCHES = reverse("admin:control_commandbatch_changelist")
REPLIES = reverse("admin:control_commandreply_changelist")


@pytest.fixture
def device():
    return DeviceFactory(
        id="lamp-1", device_type="actuator", activation_state=ActivationState.ACTIVE, status=DeviceStatus.ONLINE
    )


def command(device, status=CommandStatus.PENDING, command_type="set_state", batch=None, **fields):
    now = timezone.now()
    if status != CommandStatus.PENDING:
        fields.setdefault("sent_at", now)
        fields.setdefault("deadline_at", now + timedelta(seconds=30))
    if status in {CommandStatus.SUCCESS, CommandStatus.FAILED}:
        fields.setdefault("completed_at", now)
    return DeviceCommand.objects.create(
        device=device,
        command_type=command_type,
        params={"state": True} if command_type == "set_state" else {},
        timeout=30,
        status=status,
        batch=batch,
        **fields,
    )


def make_batch(devices, statuses, command_type="reboot"):
    batch = CommandBatch.objects.create(
        command_type=command_type,
        params={},
        targets={"devices": [d.pk for d in devices]},
        total=len(statuses),
        timeout=30,
    )
    for device, status in zip(devices, statuses, strict=True):
        command(device, status=status, command_type=command_type, batch=batch)
    return batch


def change_url(obj):
    return reverse(f"admin:control_{obj._meta.model_name}_change", args=[obj.pk])


def texts(response):
    return [str(message) for message in get_messages(response.wsgi_request)]


# --- Command list and pages ------------------------------------------------------------------------


@pytest.mark.parametrize("client_fixture", ["admin_staff", "viewer_staff"])
@pytest.mark.parametrize(
    "query",
    [
        "",
        "?status__exact=sent",
        "?command_type__exact=set_state",
        "?batch=none",
        "?q=lamp",
        "?created_at__year=2020",
        "?o=-6",
        "?device__id__exact=lamp-1",
    ],
)
def test_command_changelist_renders_with_filters(request, client_fixture, query, device):
    client = request.getfixturevalue(client_fixture)
    command(device, status=CommandStatus.SENT)
    make_batch([DeviceFactory()], [CommandStatus.SUCCESS])
    response = client.get(COMMANDS + query)
    assert response.status_code == 200


def test_command_changelist_shows_badges_links_and_searches_by_short_id(admin_staff, device):
    mine = command(device, status=CommandStatus.EXECUTING)
    other = command(DeviceFactory(id="fan-9"), status=CommandStatus.FAILED)
    html = admin_staff.get(COMMANDS).content.decode()
    assert 'class="command-status command-status-executing"' in html and ">Executing<" in html
    assert reverse("admin:devices_device_change", args=["lamp-1"]) in html
    assert "control/admin.css" in html

    found = admin_staff.get(COMMANDS + f"?q={str(mine.pk)[:8]}").context["cl"].result_list
    assert [c.pk for c in found] == [mine.pk]
    found = admin_staff.get(COMMANDS + f"?q={mine.pk}").context["cl"].result_list
    assert [c.pk for c in found] == [mine.pk]
    found = admin_staff.get(COMMANDS + "?q=fan-9").context["cl"].result_list
    assert [c.pk for c in found] == [other.pk]
    found = admin_staff.get(COMMANDS + "?device__id__exact=lamp-1").context["cl"].result_list
    assert [c.pk for c in found] == [mine.pk]


def test_batch_filter_lists_recent_batches_and_the_one_asked_for(admin_staff, device):
    single = command(device)
    batch = make_batch([device, DeviceFactory()], [CommandStatus.SENT, CommandStatus.SUCCESS])
    response = admin_staff.get(COMMANDS + f"?batch={batch.pk}")
    assert {c.batch_id for c in response.context["cl"].result_list} == {batch.pk}
    assert len(response.context["cl"].result_list) == 2
    assert [c.pk for c in admin_staff.get(COMMANDS + "?batch=none").context["cl"].result_list] == [single.pk]
    assert admin_staff.get(COMMANDS + "?batch=not-a-uuid").context["cl"].result_list.count() == 0


@pytest.mark.parametrize("client_fixture", ["admin_staff", "viewer_staff"])
def test_command_page_is_read_only_with_its_replies(request, client_fixture, device):
    client = request.getfixturevalue(client_fixture)
    cmd = command(device, status=CommandStatus.SUCCESS, result={"state": True})
    CommandReply.objects.create(
        command=cmd, status=CommandStatus.EXECUTING, received_at=timezone.now(), applied=True, result=None
    )
    CommandReply.objects.create(
        command=cmd, status=CommandStatus.SUCCESS, received_at=timezone.now(), applied=True, result={"state": True}
    )
    response = client.get(change_url(cmd))
    assert response.status_code == 200
    html = response.content.decode()
    assert "Replies received" in html and html.count("command-status-") >= 1
    assert 'name="_save"' not in html  # nothing to save: commands change only through the services
    assert "Cancel command" not in html  # finished
    assert client.get(reverse("admin:control_devicecommand_add")).status_code == 403
    delete = reverse("admin:control_devicecommand_delete", args=[cmd.pk])
    assert client.get(delete).status_code == 403


def test_edits_are_refused_even_for_administrators(admin_staff, device):
    cmd = command(device, status=CommandStatus.SENT)
    admin_staff.post(change_url(cmd), {"status": "success", "error": "forged"})
    cmd.refresh_from_db()
    assert cmd.status == CommandStatus.SENT and cmd.error == ""


# --- Cancelling ----------------------------------------------------------------------------------


def _cancel_action(client, commands):
    return client.post(
        COMMANDS, {"action": "cancel_commands", ACTION_CHECKBOX_NAME: [str(c.pk) for c in commands]}, follow=True
    )


@pytest.mark.parametrize("client_fixture", ["admin_staff", "operator_staff"])
def test_cancel_action_cancels_unfinished_and_reports_finished(request, client_fixture, device):
    client = request.getfixturevalue(client_fixture)
    pending = command(device)
    sent = command(device, status=CommandStatus.SENT)
    done = command(device, status=CommandStatus.SUCCESS)
    response = _cancel_action(client, [pending, sent, done])
    assert response.status_code == 200
    messages = texts(response)
    assert "2 commands cancelled." in messages
    assert "1 command was already finished and left as it was." in messages
    for cmd in (pending, sent):
        cmd.refresh_from_db()
        assert cmd.status == CommandStatus.CANCELLED and cmd.completed_at is not None
        assert cmd.error.startswith("Cancelled by ")
    done.refresh_from_db()
    assert done.status == CommandStatus.SUCCESS


def test_cancel_action_with_only_finished_commands(admin_staff, device):
    done = [command(device, status=CommandStatus.FAILED), command(device, status=CommandStatus.SUCCESS)]
    messages = texts(_cancel_action(admin_staff, done))
    assert messages == ["2 commands were already finished and left as they were."]


def test_viewer_cannot_cancel(viewer_staff, device):
    cmd = command(device, status=CommandStatus.SENT)
    response = viewer_staff.get(COMMANDS)
    assert response.status_code == 200
    action_form = response.context["action_form"]
    offered = [] if action_form is None else [name for name, _ in action_form.fields["action"].choices]
    assert "cancel_commands" not in offered
    _cancel_action(viewer_staff, [cmd])
    cmd.refresh_from_db()
    assert cmd.status == CommandStatus.SENT

    assert "Cancel command" not in viewer_staff.get(change_url(cmd)).content.decode()
    cancel = reverse("admin:control_devicecommand_cancel", args=[cmd.pk])
    assert viewer_staff.post(cancel).status_code == 403
    cmd.refresh_from_db()
    assert cmd.status == CommandStatus.SENT


def test_cancel_button_on_a_command_page(operator_staff, device):
    cmd = command(device, status=CommandStatus.EXECUTING)
    cancel = reverse("admin:control_devicecommand_cancel", args=[cmd.pk])
    html = operator_staff.get(change_url(cmd)).content.decode()
    assert "Cancel command" in html and cancel in html
    assert operator_staff.get(cancel).status_code == 405
    response = operator_staff.post(cancel, follow=True)
    assert response.redirect_chain[-1][0] == change_url(cmd)
    assert texts(response) == ["1 command cancelled."]
    cmd.refresh_from_db()
    assert cmd.status == CommandStatus.CANCELLED
    assert "Cancel command" not in response.content.decode()
    # Again: already finished.
    assert texts(operator_staff.post(cancel, follow=True)) == ["1 command was already finished and left as it was."]
    assert operator_staff.post(reverse("admin:control_devicecommand_cancel", args=[uuid.uuid4()])).status_code == 404


# --- Batches -------------------------------------------------------------------------------------


@pytest.mark.parametrize("client_fixture", ["admin_staff", "viewer_staff"])
def test_batch_changelist_shows_progress(request, client_fixture, device):
    client = request.getfixturevalue(client_fixture)
    others = [DeviceFactory(), DeviceFactory()]
    make_batch(
        [device, *others], [CommandStatus.SUCCESS, CommandStatus.FAILED, CommandStatus.SENT], command_type="reboot"
    )
    response = client.get(BATCHES)
    assert response.status_code == 200
    html = response.content.decode()
    assert '<progress value="2" max="3"></progress>' in html and ">2/3<" in html
    assert re.search(r"command-status-success\">1 success<", html)
    assert re.search(r"command-status-failed\">1 failed<", html)
    assert re.search(r"command-status-sent\">1 sent<", html)
    assert (
        client.get(BATCHES + "?command_type__exact=reboot&q=" + str(CommandBatch.objects.get().pk)[:6]).status_code
        == 200
    )


def test_batch_changelist_counts_with_one_query_for_the_whole_page(admin_staff):
    def queries_for(n_batches):
        from django.db import connection
        from django.test.utils import CaptureQueriesContext

        with CaptureQueriesContext(connection) as captured:
            assert admin_staff.get(BATCHES).status_code == 200
        return len(captured)

    make_batch([DeviceFactory()], [CommandStatus.SUCCESS])
    one = queries_for(1)
    for _ in range(5):
        make_batch([DeviceFactory(), DeviceFactory()], [CommandStatus.SENT, CommandStatus.TIMEOUT])
    assert queries_for(6) == one


@pytest.mark.parametrize("client_fixture", ["admin_staff", "viewer_staff"])
def test_batch_page_shows_counts_and_links_to_its_commands(request, client_fixture, device):
    client = request.getfixturevalue(client_fixture)
    batch = make_batch([device, DeviceFactory()], [CommandStatus.SUCCESS, CommandStatus.EXPIRED])
    command(device)  # not in the batch
    response = client.get(change_url(batch))
    assert response.status_code == 200
    html = response.content.decode()
    link = f"{COMMANDS}?batch={batch.pk}"
    assert link in html and "All 2 commands of this batch" in html
    assert f"{COMMANDS}?batch={batch.pk}&amp;status__exact=expired" in html
    assert 'name="_save"' not in html
    listed = client.get(link).context["cl"].result_list
    assert len(listed) == 2 and {c.batch_id for c in listed} == {batch.pk}
    assert client.get(reverse("admin:control_commandbatch_add")).status_code == 403


# --- Replies -------------------------------------------------------------------------------------


@pytest.mark.parametrize("client_fixture", ["admin_staff", "viewer_staff"])
def test_reply_pages_render(request, client_fixture, device):
    client = request.getfixturevalue(client_fixture)
    cmd = command(device, status=CommandStatus.SUCCESS)
    reply = CommandReply.objects.create(
        command=cmd, status=CommandStatus.SUCCESS, received_at=timezone.now(), applied=False, result={"x": 1}
    )
    for query in ["", "?applied__exact=0", "?status__exact=success", f"?q={str(cmd.pk)[:8]}", "?q=lamp"]:
        response = client.get(REPLIES + query)
        assert response.status_code == 200
        assert len(response.context["cl"].result_list) == 1
    assert client.get(change_url(reply)).status_code == 200


# --- The console on a device's page ----------------------------------------------------------------


def _device_page(client, device):
    response = client.get(reverse("admin:devices_device_change", args=[device.pk]))
    assert response.status_code == 200
    return response.content.decode()


@pytest.mark.parametrize("client_fixture", ["admin_staff", "operator_staff"])
def test_console_on_the_device_page_for_those_who_may_send(request, client_fixture, device):
    html = _device_page(request.getfixturevalue(client_fixture), device)
    assert 'id="command-console"' in html and 'id="command-send"' in html
    assert 'id="recent-commands"' in html
    assert 'data-device-type="actuator"' in html
    assert 'data-types-url="/api/v1/command-types/"' in html
    assert 'data-history-url="/api/v1/devices/lamp-1/commands/"' in html
    assert "/static/control/console.js" in html and "/static/control/admin.css" in html
    assert f"{COMMANDS}?device__id__exact=lamp-1" in html
    # The live telemetry box is still there.
    assert 'id="live-telemetry"' in html
    # The console's inputs carry no names: saving the device never submits them.
    console = html[html.index('id="command-console"') : html.index('id="recent-commands"')]
    assert " name=" not in console


def test_no_console_for_viewers_but_the_recent_commands(viewer_staff, device):
    html = _device_page(viewer_staff, device)
    assert 'id="command-console"' not in html and 'id="command-send"' not in html
    assert 'id="recent-commands"' in html and 'id="live-telemetry"' in html


def test_no_commands_box_without_the_view_permission(client, device):
    from django.contrib.auth.models import Permission

    user = UserFactory(username="devices-only", is_staff=True)
    user.user_permissions.set(Permission.objects.filter(codename="view_device"))
    client.force_login(user)
    html = _device_page(client, device)
    assert 'id="device-commands"' not in html and "control/console.js" not in html
    assert 'id="live-telemetry"' in html


def test_command_profile_of_the_device_reaches_the_console(admin_staff):
    device = DeviceFactory(id="narrow", metadata={"commands": ["reboot"]})
    html = _device_page(admin_staff, device)
    assert '<script id="command-profile" type="application/json">["reboot"]</script>' in html


def test_console_static_files_exist():
    assert finders.find("control/console.js") and finders.find("control/admin.css")


def test_add_device_page_has_no_console(admin_staff):
    html = admin_staff.get(reverse("admin:devices_device_add")).content.decode()
    assert 'id="command-console"' not in html
