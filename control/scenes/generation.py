"""Which version of the scene set is current, shared by every process through the cache (as
``rules.generation`` is for rules): every scene change bumps it after commit, and each process
reloads its compiled triggers when it moved."""

from __future__ import annotations

import uuid

from django.core.cache import cache

KEY = "scenes:generation"


def current() -> str:
    value = cache.get(KEY)
    if value is None:
        value = uuid.uuid4().hex
        if not cache.add(KEY, value, None):
            value = cache.get(KEY) or value
    return value


def bump() -> str:
    value = uuid.uuid4().hex
    cache.set(KEY, value, None)
    return value
