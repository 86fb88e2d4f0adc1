from django.apps import AppConfig


class LiveConfig(AppConfig):
    name = "live"
    verbose_name = "Live updates (WebSocket)"

    def ready(self) -> None:
        from live.daphne_compat import pass_close_reasons

        pass_close_reasons()
