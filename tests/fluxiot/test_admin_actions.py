"""The shared enable/disable admin action, through the rules and scenes admin pages."""

import pytest
from django.contrib.admin.helpers import ACTION_CHECKBOX_NAME
from django.contrib.messages import get_messages
from django.urls import reverse

from control.scenes import services as scene_services
from control.scenes.models import Scene
from rules import services as rule_services
from rules.models import Rule

pytestmark = pytest.mark.django_db

CONDITION = "telemetry.temperature > 30.0"


def messages_of(response) -> list[str]:
    return [str(message) for message in get_messages(response.wsgi_request)]


def test_rules_are_enabled_skipped_or_refused_with_a_reason(admin_staff):
    off = rule_services.create_rule(None, name="off", condition=CONDITION, enabled=False)
    on = rule_services.create_rule(None, name="on", condition=CONDITION)
    broken = rule_services.create_rule(None, name="broken", condition=CONDITION, enabled=False)
    Rule.objects.filter(pk=broken.pk).update(condition="telemetry.temperature >")  # stored before a stricter check
    response = admin_staff.post(
        reverse("admin:rules_rule_changelist"),
        {"action": "enable_rules", ACTION_CHECKBOX_NAME: [off.pk, on.pk, broken.pk]},
        follow=True,
    )
    [done, refused] = messages_of(response)
    assert done == "1 rule enabled."
    assert refused.startswith("Not valid any more, left as they were: broken (")
    assert dict(Rule.objects.values_list("name", "enabled")) == {"off": True, "on": True, "broken": False}
    assert Rule.objects.get(pk=on.pk).version == 1  # already enabled: no new version


def test_scenes_are_disabled_through_their_service(admin_staff):
    scene = scene_services.create_scene(
        None, name="lights", triggers=[{"kind": "manual"}], then_actions=[{"type": "emit_event", "params": {}}]
    )
    response = admin_staff.post(
        reverse("admin:control_scene_changelist"),
        {"action": "disable_scenes", ACTION_CHECKBOX_NAME: [scene.pk]},
        follow=True,
    )
    assert messages_of(response) == ["1 scene disabled."]
    assert Scene.objects.get(pk=scene.pk).enabled is False
