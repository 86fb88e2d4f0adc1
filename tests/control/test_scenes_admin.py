"""Admin pages of scenes: the JSON form checked by the services, Execute now, the executions (inline
and their own read-only pages), refusing to delete a scene another one runs."""

from __future__ import annotations

import json

import pytest
from django.contrib.messages import get_messages
from django.urls import reverse
from django_celery_beat.models import PeriodicTask

from control.models import Scene, SceneExecution
from control.scenes import services

pytestmark = pytest.mark.django_db

EMIT = {"type": "emit_event", "params": {"message": "hi"}}
SCENES = reverse("admin:control_scene_changelist")
ADD = reverse("admin:control_scene_add")
EXECUTIONS = reverse("admin:control_sceneexecution_changelist")


def form(**fields):
    data = {
        "name": "weekday morning",
        "description": "",
        "enabled": "on",
        "time_zone": "Europe/Berlin",
        "cooldown": "0",
        "triggers": json.dumps([{"kind": "schedule", "cron": "0 7 * * 1-5"}, {"kind": "manual"}]),
        "conditions": "[]",
        "then_actions": json.dumps([EMIT]),
        "else_if": "[]",
        "else_actions": "",
        "executions-TOTAL_FORMS": "0",
        "executions-INITIAL_FORMS": "0",
        "executions-MIN_NUM_FORMS": "0",
        "executions-MAX_NUM_FORMS": "1000",
    }
    data.update(fields)
    return data


def messages_of(response):
    return [str(m) for m in get_messages(response.wsgi_request)]


def test_add_a_scene_with_its_schedule(admin_staff, django_capture_on_commit_callbacks):
    with django_capture_on_commit_callbacks(execute=True):
        response = admin_staff.post(ADD, form())
    assert response.status_code == 302, response.context["adminform"].form.errors
    scene = Scene.objects.get()
    assert scene.created_by.username == "boss" and scene.else_actions == []
    assert PeriodicTask.objects.get(name=f"scene:{scene.pk}:0").crontab.hour == "7"
    page = admin_staff.get(reverse("admin:control_scene_change", args=[scene.pk]))
    assert page.status_code == 200
    body = page.content.decode()
    assert "Execute now" in body and f"scene:{scene.pk}:0" in body and "Monday through Friday" in body
    assert admin_staff.get(SCENES).status_code == 200


def test_the_form_shows_the_services_errors_by_field(admin_staff):
    response = admin_staff.post(
        ADD,
        form(
            time_zone="Nowhere/Special",
            triggers=json.dumps([{"kind": "schedule", "cron": "61 * * * *"}]),
            conditions=json.dumps(["trigger.telemetry.x >"]),
            then_actions=json.dumps(
                [{"type": "send_command", "params": {"type": "reboot", "target": {"device": "x"}}}]
            ),
        ),
    )
    assert response.status_code == 200
    errors = response.context["adminform"].form.errors
    assert "Unknown time zone" in str(errors["time_zone"])
    assert "cron" in str(errors["triggers"]) and "conditions[0]" in str(errors["conditions"])
    assert "no device 'x'" in " ".join(errors["then_actions"])
    assert not Scene.objects.exists()


def test_execute_now_and_the_executions(operator_staff):
    scene = services.create_scene(None, name="hand", triggers=[{"kind": "manual"}], then_actions=[EMIT, EMIT])
    response = operator_staff.post(reverse("admin:control_scene_execute", args=[scene.pk]))
    assert response.status_code == 302
    execution = SceneExecution.objects.get()
    assert execution.branch == "then" and execution.triggered_by.username == "ops"
    assert any("hand: branch then, 2 actions run" in text for text in messages_of(response))

    change = operator_staff.get(reverse("admin:control_scene_change", args=[scene.pk])).content.decode()
    assert "Executions (latest 20)" in change and "2 ok, 0 failed" in change
    assert operator_staff.get(EXECUTIONS).status_code == 200
    detail = operator_staff.get(reverse("admin:control_sceneexecution_change", args=[execution.pk]))
    assert detail.status_code == 200 and "emit_event" in detail.content.decode()
    assert operator_staff.get(reverse("admin:control_scene_execute", args=[scene.pk])).status_code == 405

    # The list action too.
    operator_staff.post(SCENES, {"action": "execute_scenes", "_selected_action": [scene.pk]})
    assert SceneExecution.objects.count() == 2


def test_viewers_cannot_execute(viewer_staff):
    scene = services.create_scene(None, name="look", triggers=[{"kind": "manual"}], then_actions=[EMIT])
    page = viewer_staff.get(reverse("admin:control_scene_change", args=[scene.pk])).content.decode()
    assert "Execute now" not in page
    assert viewer_staff.post(reverse("admin:control_scene_execute", args=[scene.pk])).status_code == 403
    assert not SceneExecution.objects.exists()


def test_a_disabled_scene_is_not_executed(admin_staff):
    scene = services.create_scene(None, name="off", enabled=False, triggers=[{"kind": "manual"}], then_actions=[EMIT])
    response = admin_staff.post(reverse("admin:control_scene_execute", args=[scene.pk]))
    assert any("disabled" in text for text in messages_of(response))
    assert not SceneExecution.objects.exists()


def test_deleting_a_scene_another_one_runs_is_refused(admin_staff):
    target = services.create_scene(None, name="target", triggers=[{"kind": "manual"}], then_actions=[EMIT])
    services.create_scene(
        None,
        name="caller",
        triggers=[{"kind": "manual"}],
        then_actions=[{"type": "run_scene", "params": {"scene": target.pk}}],
    )
    response = admin_staff.post(reverse("admin:control_scene_delete", args=[target.pk]), {"post": "yes"})
    assert response.status_code == 302
    assert any("run by other scenes (caller" in text for text in messages_of(response))
    assert Scene.objects.filter(pk=target.pk).exists()


def test_change_a_scene_moves_its_schedule(admin_staff, django_capture_on_commit_callbacks):
    scene = services.create_scene(
        None, name="weekday morning", triggers=[{"kind": "schedule", "cron": "0 7 * * 1-5"}], then_actions=[EMIT]
    )
    url = reverse("admin:control_scene_change", args=[scene.pk])
    with django_capture_on_commit_callbacks(execute=True):
        response = admin_staff.post(url, form(triggers=json.dumps([{"kind": "schedule", "cron": "15 8 * * *"}])))
    assert response.status_code == 302, response.context["adminform"].form.errors
    scene.refresh_from_db()
    assert scene.time_zone == "Europe/Berlin" and scene.triggers == [{"kind": "schedule", "cron": "15 8 * * *"}]
    task = PeriodicTask.objects.get(name=f"scene:{scene.pk}:0")
    assert (task.crontab.minute, task.crontab.hour, str(task.crontab.timezone)) == ("15", "8", "Europe/Berlin")
