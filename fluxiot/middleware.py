"""Keep the whole middleware chain in one mode.

Under ASGI, Django runs each async-capable ``MiddlewareMixin`` hook through ``sync_to_async`` when
a sync-only middleware (WhiteNoise) or a sync view sits further in: a thread hand-off per hook,
about half a millisecond each here. Marking the innermost middleware sync-only makes every
middleware above it run synchronously in one thread, entered once per request.
"""

from collections.abc import Callable

from django.http import HttpRequest, HttpResponse


class SyncChainMiddleware:
    sync_capable = True
    async_capable = False

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        return self.get_response(request)
