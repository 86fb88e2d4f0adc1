"""Which version of the rule and plugin set is current (``fluxiot.generations``): every change to a
rule or plugin calls ``bump()`` after commit, and each worker reloads what it compiled when
``current()`` moved, within one ingest batch."""

from __future__ import annotations

from fluxiot.generations import Generation

KEY = "rules:generation"
_generation = Generation(KEY)
current = _generation.current
bump = _generation.bump
