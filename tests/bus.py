"""Listen on the real channel layer (Redis in the tests) for events from the bus."""

import asyncio
import threading

from channels.layers import get_channel_layer

from fluxiot import events


class BusListener:
    """Joins the groups of the given event types on a loop of its own (the layer's receive buffers
    belong to one event loop); ``received()`` drains what has arrived."""

    def __init__(self, *event_types: str) -> None:
        self.layer = get_channel_layer()
        self.groups = events.subscribe_groups(list(event_types))
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.channel = self._run(self.layer.new_channel())
        for group in self.groups:
            self._run(self.layer.group_add(group, self.channel))

    def _run(self, coroutine, timeout: float = 10):
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result(timeout)

    def received(self, wait: float = 0.5) -> list[dict]:
        events.flush()  # what this process published has left it

        async def drain() -> list[dict]:
            got = []
            while True:
                try:
                    message = await asyncio.wait_for(self.layer.receive(self.channel), timeout=wait)
                except TimeoutError:
                    return got
                got.append(message["event"])

        return self._run(drain(), timeout=60)

    def close(self) -> None:
        for group in self.groups:
            self._run(self.layer.group_discard(group, self.channel))
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)
