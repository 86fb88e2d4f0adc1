"""FluxIoT SDK: the device simulator (``sdk.simulator``) and the plugin SDK (``sdk/plugins``: C header, examples)."""
