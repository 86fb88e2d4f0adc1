"""Generation numbers in the shared cache: how a change to something every process keeps compiled
(rules, plugins, scenes) reaches every process without a restart. A change calls ``bump()`` after it
commits; each process compares ``current()`` with the generation it built from and reloads when they
differ (one cache read, no database query, when nothing changed)."""

from __future__ import annotations

import uuid

from django.core.cache import cache


class Generation:
    def __init__(self, key: str) -> None:
        self.key = key

    def current(self) -> str:
        value = cache.get(self.key)
        if value is None:
            value = uuid.uuid4().hex
            if not cache.add(self.key, value, None):
                value = cache.get(self.key) or value
        return value

    def bump(self) -> str:
        value = uuid.uuid4().hex
        cache.set(self.key, value, None)
        return value
