from django.db import models


class RejectReason(models.TextChoices):
    """Why a message was not ingested (dead-letter records and the rejected-messages metric)."""

    MALFORMED_JSON = "malformed_json", "Malformed JSON"
    PAYLOAD_TOO_LARGE = "payload_too_large", "Payload over the size limit"
    NOT_AN_OBJECT = "not_an_object", "Payload is not an object (or a list of objects)"
    UNKNOWN_DEVICE = "unknown_device", "Unknown device"
    DEVICE_NOT_ACTIVE = "device_not_active", "Device not active (registered or disabled)"
    BAD_TOPIC = "bad_topic", "Topic outside the device contract"
    UNSUPPORTED_VALUE = "unsupported_value", "Value of an unsupported type"
    BAD_KEY = "bad_key", "Bad key"
    TOO_MANY_KEYS = "too_many_keys", "Too many keys"
    BAD_TIMESTAMP = "bad_timestamp", "Unreadable timestamp"
    FUTURE_TIMESTAMP = "future_timestamp", "Timestamp too far in the future"
    OLD_TIMESTAMP = "old_timestamp", "Timestamp too old"
    BAD_STATUS = "bad_status", "Status is not online or offline"
    BAD_REPLY = "bad_reply", "Command reply without a valid status"
    UNKNOWN_COMMAND = "unknown_command", "Reply for an unknown command"
    WRONG_DEVICE = "wrong_device", "Reply for a command of another device"
    PLUGIN_FAILED = "plugin_failed", "Preprocess plugin failed (plugin set to dead-letter)"
