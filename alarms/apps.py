from django.apps import AppConfig


class AlarmsConfig(AppConfig):
    name = "alarms"
    verbose_name = "Alarms and notifications"

    def ready(self) -> None:
        from alarms import actions, checks
        from control import hooks as control_hooks
        from devices import hooks as device_hooks

        if checks.device_status_changed not in device_hooks.status_changed:
            device_hooks.status_changed.append(checks.device_status_changed)
        if checks.commands_failed not in control_hooks.commands_failed:
            control_hooks.commands_failed.append(checks.commands_failed)
        actions.register_all()
