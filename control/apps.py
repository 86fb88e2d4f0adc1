from django.apps import AppConfig


class ControlConfig(AppConfig):
    name = "control"
    verbose_name = "Device commands"

    def ready(self) -> None:
        from control import services
        from control.scenes import engine  # registers the run_scene action too
        from devices import hooks

        if services.deliver_on_online not in hooks.came_online:
            hooks.came_online.append(services.deliver_on_online)
        if engine.on_status not in hooks.status_changed:
            hooks.status_changed.append(engine.on_status)
