from django.db import models


class Scope(models.TextChoices):
    """Which devices a rule or plugin applies to; ``scope_value`` names the one meant."""

    ALL = "all", "All devices"
    DEVICE = "device", "One device"
    GROUP = "group", "A group and the groups below it"
    DEVICE_TYPE = "device_type", "A device type"
    TAG = "tag", "Devices with a tag"


class Trigger(models.TextChoices):
    TELEMETRY = "telemetry", "Telemetry"
    ATTRIBUTES = "attributes", "Attributes"
    STATUS = "status", "Status change"
    COMMAND_RESULT = "command_result", "Command result"


class PluginStage(models.TextChoices):
    PREPROCESS = "preprocess", "Preprocess (decode raw payloads before rules)"
    ACTION = "action", "Action (called by rules)"


class PluginFailure(models.TextChoices):
    """What happens to a message when its preprocess plugin fails."""

    PASS = "pass", "Go on with the message unprocessed"
    DEAD_LETTER = "dead_letter", "Dead-letter the message"
