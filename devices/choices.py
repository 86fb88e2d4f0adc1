from django.db import models


class DeviceType(models.TextChoices):
    CAMERA = "camera", "Camera"
    SENSOR = "sensor", "Sensor"
    ACTUATOR = "actuator", "Actuator"
    GATEWAY = "gateway", "Gateway"
    INDUSTRIAL = "industrial", "Industrial"
    CUSTOM = "custom", "Custom"


class Protocol(models.TextChoices):
    MQTT = "mqtt", "MQTT"
    HTTP = "http", "HTTP"
    COAP = "coap", "CoAP"
    MODBUS = "modbus", "Modbus"
    OPCUA = "opcua", "OPC UA"
    RTMP = "rtmp", "RTMP"
    RTSP = "rtsp", "RTSP"
    OTHER = "other", "Other"


class DeviceStatus(models.TextChoices):
    ONLINE = "online", "Online"
    OFFLINE = "offline", "Offline"
    FAULT = "fault", "Fault"
    MAINTENANCE = "maintenance", "Maintenance"


class ActivationState(models.TextChoices):
    REGISTERED = "registered", "Registered"
    ACTIVE = "active", "Active"
    DISABLED = "disabled", "Disabled"
