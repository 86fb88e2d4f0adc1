"""Which version of the rule and plugin set is current, shared by every process through the cache.

Every change to a rule or plugin calls ``bump()``; each worker compares ``current()`` with the
generation it compiled and reloads when they differ, so a change reaches every running worker
without a restart (within one ingest batch)."""

from __future__ import annotations

import uuid

from django.core.cache import cache

KEY = "rules:generation"


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
