"""Scenes: triggers (device data, status changes, alarms, schedules, by hand), CEL conditions and
IF / ELSE-IF / ELSE action lists, run with cooldown and loop protection, every run logged.
See docs/SCENES.md."""
