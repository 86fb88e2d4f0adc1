from django.db import models


class CommandStatus(models.TextChoices):
    PENDING = "pending", "Pending"
    SENT = "sent", "Sent"
    EXECUTING = "executing", "Executing"
    SUCCESS = "success", "Success"
    FAILED = "failed", "Failed"
    TIMEOUT = "timeout", "Timed out"
    CANCELLED = "cancelled", "Cancelled"
    EXPIRED = "expired", "Expired"


# Once here, a command never changes again (late replies are recorded, nothing more).
TERMINAL = frozenset(
    {
        CommandStatus.SUCCESS,
        CommandStatus.FAILED,
        CommandStatus.TIMEOUT,
        CommandStatus.CANCELLED,
        CommandStatus.EXPIRED,
    }
)
# What a device may say in a reply.
REPLY_STATUSES = (CommandStatus.EXECUTING, CommandStatus.SUCCESS, CommandStatus.FAILED)


class CommandType(models.TextChoices):
    REBOOT = "reboot", "Reboot"
    RESET = "reset", "Reset"
    UPDATE = "update", "Firmware update"
    START_STREAM = "start_stream", "Start stream"
    STOP_STREAM = "stop_stream", "Stop stream"
    TAKE_SNAPSHOT = "take_snapshot", "Take snapshot"
    PTZ_CONTROL = "ptz_control", "Pan / tilt / zoom"
    READ_VALUE = "read_value", "Read value"
    SET_SAMPLING_RATE = "set_sampling_rate", "Set sampling rate"
    SET_STATE = "set_state", "Set state"
    SET_VALUE = "set_value", "Set value"
    CUSTOM = "custom", "Custom"
