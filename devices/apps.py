from django.apps import AppConfig


class DevicesConfig(AppConfig):
    name = "devices"
    verbose_name = "Device registry"

    def ready(self) -> None:
        from devices import lookups  # noqa: F401  (registers the tag lookups)
