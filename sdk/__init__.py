"""FluxIoT SDK: the device simulator (``sdk.simulator``) and, later, the plugin SDK."""
