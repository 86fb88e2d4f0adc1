"""The WebAssembly plugin host (``rules.plugins.host``); the ABI is in docs/PLUGIN_DEV.md."""

from rules.plugins.host import Limits, PluginError, forget, forget_all, pool_stats, run_plugin, validate_module

__all__ = ["Limits", "PluginError", "forget", "forget_all", "pool_stats", "run_plugin", "validate_module"]
