"""Generation numbers in the shared cache: how a change to something every process keeps compiled
(rules, plugins, scenes) reaches every process without a restart. A change calls ``bump()`` after it
commits; each process compares ``current()`` with the generation it built from and reloads when they
differ (one cache read, no database query, when nothing changed)."""

from __future__ import annotations

import threading
import uuid
from typing import Any, ClassVar, Self

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


class GenerationCached:
    """A per-process object built from the database (a compiled rule set, plugin set, scene set)
    and kept until its ``Generation`` moves: ``current()`` costs one cache read when nothing changed
    and reloads once, under a lock, when something did. Subclasses set ``generations`` and implement
    ``load(generation)``, which builds an instance whose ``generation`` attribute is that value."""

    generations: ClassVar[Generation]
    generation: str
    _cached: ClassVar[Any]
    _lock: ClassVar[threading.Lock]

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        cls._cached = None
        cls._lock = threading.Lock()

    @classmethod
    def current(cls) -> Self:
        """This process's instance for the current generation. Thread-safe."""
        now = cls.generations.current()
        cached = cls._cached
        if cached is not None and cached.generation == now:
            return cached
        with cls._lock:
            cached = cls._cached
            if cached is None or cached.generation != now:
                cached = cls._cached = cls.load(now)  # type: ignore[attr-defined]  # each subclass's
            return cached

    @classmethod
    def forget(cls) -> None:
        """Drop this process's instance (the next ``current()`` reloads)."""
        with cls._lock:
            cls._cached = None
