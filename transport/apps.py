from django.apps import AppConfig


def _sync_broker(device_id: str, secret: str | None, action: str) -> None:
    from transport.broker import on_credentials_changed

    on_credentials_changed(device_id, secret, action)


class TransportConfig(AppConfig):
    name = "transport"
    verbose_name = "Transport (MQTT, HTTP)"

    def ready(self) -> None:
        from devices import hooks

        if _sync_broker not in hooks.credentials_changed:
            hooks.credentials_changed.append(_sync_broker)
