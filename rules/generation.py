"""Which version of the rule and plugin set is current (``fluxiot.generations``): every change to a
rule or plugin calls ``bump()`` after commit, and each worker reloads what it compiled when
``current()`` moved, within one ingest batch."""

from __future__ import annotations

from fluxiot.generations import Generation

KEY = "rules:generation"
GENERATION = Generation(KEY)
current = GENERATION.current
bump = GENERATION.bump
