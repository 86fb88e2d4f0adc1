from django.db import models


class TriggerKind(models.TextChoices):
    """What can start a scene (the kinds a scene's ``triggers`` list)."""

    DEVICE_DATA = "device_data", "Device data (telemetry or attributes)"
    DEVICE_STATUS = "device_status", "Device status change"
    ALARM = "alarm", "Alarm raised or cleared"
    SCHEDULE = "schedule", "Schedule (cron)"
    MANUAL = "manual", "By hand"


class RunKind(models.TextChoices):
    """What started one execution: a trigger kind, or another scene or a rule (``run_scene``)."""

    DEVICE_DATA = "device_data", "Device data"
    DEVICE_STATUS = "device_status", "Device status change"
    ALARM = "alarm", "Alarm"
    SCHEDULE = "schedule", "Schedule"
    MANUAL = "manual", "By hand"
    SCENE = "scene", "Another scene"
    RULE = "rule", "A rule"


class Branch(models.TextChoices):
    """Which part of a scene an execution ran."""

    THEN = "then", "Then"
    ELSE_IF = "else_if", "Else if"
    ELSE = "else", "Else"
    NONE = "none", "None (no branch applied)"
    SKIPPED = "skipped", "Skipped (cooldown, loop, disabled)"
    ERROR = "error", "Error (a condition failed)"


# Branches that ran actions: they start the cooldown and count towards loop detection.
RAN = frozenset({Branch.THEN, Branch.ELSE_IF, Branch.ELSE})


class ExecutionStatus(models.TextChoices):
    RUNNING = "running", "Running"
    WAITING = "waiting", "Waiting (delay)"
    DONE = "done", "Done"


class ActionOutcome(models.TextChoices):
    OK = "ok", "OK"
    FAILED = "failed", "Failed"
    WAITING = "waiting", "Waiting (delay)"
