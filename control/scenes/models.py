"""Scenes and their executions. Imported by control/models.py so that Django finds them in the
``control`` app; changed only through control/scenes/services.py."""

from __future__ import annotations

from django.conf import settings
from django.db import models

from control.scenes.choices import Branch, ExecutionStatus


class Scene(models.Model):
    """Triggers, conditions and IF / ELSE-IF / ELSE action lists (the JSON shapes are in
    docs/SCENES.md and checked by ``control.scenes.services.validate_scene``)."""

    name = models.CharField(max_length=128, unique=True)
    description = models.TextField(blank=True)
    enabled = models.BooleanField(default=True)
    time_zone = models.CharField(
        max_length=64, default="UTC", help_text="The IANA time zone of local.* and of the schedules (Europe/Paris)."
    )
    triggers = models.JSONField(
        default=list, blank=True, help_text='What starts the scene: a list of {"kind": …} (device_data, …).'
    )
    conditions = models.JSONField(
        default=list, blank=True, help_text="CEL expressions that must all hold for the THEN actions (IF)."
    )
    then_actions = models.JSONField(default=list, blank=True, help_text='THEN: a list of {"type": …, "params": {…}}.')
    else_if = models.JSONField(
        default=list,
        blank=True,
        help_text='ELSE IF: a list of {"condition": CEL, "actions": […]}, tried in order when the IF fails.',
    )
    else_actions = models.JSONField(default=list, blank=True, help_text="ELSE: when nothing above applied.")
    cooldown = models.PositiveIntegerField(
        default=0, help_text="Seconds after a run that ran actions during which triggers are skipped."
    )
    last_run_at = models.DateTimeField(
        null=True, blank=True, editable=False, help_text="The last run that ran actions (the cooldown counts from it)."
    )
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        app_label = "control"
        ordering = ["name"]
        permissions = [("execute_scene", "Can execute scenes by hand")]

    # What the services edit (the API and the admin alike).
    EDITABLE = (
        "name",
        "description",
        "enabled",
        "time_zone",
        "triggers",
        "conditions",
        "then_actions",
        "else_if",
        "else_actions",
        "cooldown",
    )

    def __str__(self) -> str:
        return self.name


class SceneExecution(models.Model):
    """One run of a scene: what triggered it, the branch it took and each action's result."""

    scene = models.ForeignKey(Scene, on_delete=models.CASCADE, related_name="executions")
    trigger = models.JSONField(default=dict, help_text="What started the run (kind, device, values, chain, …).")
    branch = models.CharField(max_length=16, choices=Branch.choices)
    branch_index = models.PositiveSmallIntegerField(
        null=True, blank=True, help_text="For else_if: which entry (0 is the first)."
    )
    status = models.CharField(max_length=16, choices=ExecutionStatus.choices, default=ExecutionStatus.RUNNING)
    actions = models.JSONField(
        default=list, blank=True, help_text="The branch's actions as they were when the run chose the branch."
    )
    results = models.JSONField(default=list, blank=True, help_text="One entry per action run: type, status, error.")
    failed_actions = models.PositiveSmallIntegerField(default=0)
    error = models.TextField(blank=True, help_text="Why it was skipped, or why a condition failed.")
    started_at = models.DateTimeField()
    finished_at = models.DateTimeField(null=True, blank=True)
    # Waiting after a delay action: when and from which action of the branch it goes on.
    resume_at = models.DateTimeField(null=True, blank=True)
    resume_index = models.PositiveSmallIntegerField(null=True, blank=True)
    triggered_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )

    class Meta:
        app_label = "control"
        ordering = ["-started_at", "-id"]
        indexes = [
            models.Index(fields=["scene", "started_at"], name="sceneexecution_scene_started"),
            models.Index(fields=["started_at"], name="sceneexecution_started"),
        ]

    def __str__(self) -> str:
        return f"{self.scene_id} {self.branch} at {self.started_at:%Y-%m-%d %H:%M:%S}"

    @property
    def kind(self) -> str:
        return str((self.trigger or {}).get("kind", ""))
