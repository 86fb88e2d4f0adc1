from __future__ import annotations

from typing import Any

from rest_framework import serializers

from control.scenes import schedules
from control.scenes.models import Scene, SceneExecution


class SceneSerializer(serializers.ModelSerializer):
    """A scene. Everything is checked by the service when saved (400 naming the trigger, condition
    or action that is wrong); the shapes are in docs/SCENES.md."""

    triggers = serializers.JSONField(
        required=False,
        help_text='What starts it: [{"kind": "device_data", "device": …, "condition": CEL}, '
        '{"kind": "device_status", …}, {"kind": "alarm", …}, {"kind": "schedule", "cron": "0 7 * * 1-5"}, '
        '{"kind": "manual"}].',
    )
    conditions = serializers.JSONField(required=False, help_text="IF: CEL expressions that must all hold.")
    then_actions = serializers.JSONField(required=False, help_text='THEN: [{"type": …, "params": {…}}].')
    else_if = serializers.JSONField(
        required=False, help_text='ELSE IF: [{"condition": CEL, "actions": [...]}], tried in order.'
    )
    else_actions = serializers.JSONField(required=False, help_text="ELSE: when nothing above applied.")
    schedules = serializers.SerializerMethodField(help_text="The periodic tasks of its schedule triggers.")
    created_by = serializers.CharField(source="created_by.get_username", read_only=True, default=None)

    class Meta:
        model = Scene
        fields = [
            "id",
            "name",
            "description",
            "enabled",
            "time_zone",
            "cooldown",
            "triggers",
            "conditions",
            "then_actions",
            "else_if",
            "else_actions",
            "schedules",
            "last_run_at",
            "created_by",
            "created_at",
            "updated_at",
        ]
        read_only_fields = ["last_run_at", "created_at", "updated_at"]

    def get_schedules(self, scene: Scene) -> list[dict[str, Any]]:
        return schedules.schedules_of(scene)


class SceneExecutionSerializer(serializers.ModelSerializer):
    scene_name = serializers.CharField(source="scene.name", read_only=True)
    kind = serializers.CharField(read_only=True, help_text="What started it (the trigger's kind).")
    triggered_by = serializers.CharField(source="triggered_by.get_username", read_only=True, default=None)
    actions = serializers.JSONField(read_only=True, help_text="The branch's actions as they were.")
    results = serializers.JSONField(
        read_only=True, help_text='Per action run: {"index", "type", "status": ok|failed|waiting, "error"?, "at"}.'
    )
    trigger = serializers.JSONField(read_only=True)

    class Meta:
        model = SceneExecution
        fields = [
            "id",
            "scene",
            "scene_name",
            "kind",
            "trigger",
            "branch",
            "branch_index",
            "status",
            "actions",
            "results",
            "failed_actions",
            "error",
            "started_at",
            "finished_at",
            "resume_at",
            "triggered_by",
        ]
        read_only_fields = fields


class SceneActionTypeSerializer(serializers.Serializer):
    type = serializers.CharField()
    description = serializers.CharField()
    params_schema = serializers.JSONField()
    example = serializers.JSONField()
