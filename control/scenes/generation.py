"""Which version of the scene set is current (``fluxiot.generations``, as ``rules.generation`` is for
rules): every scene change bumps it after commit, and each process reloads its compiled triggers when
it moved."""

from __future__ import annotations

from fluxiot.generations import Generation

KEY = "scenes:generation"
GENERATION = Generation(KEY)
current = GENERATION.current
bump = GENERATION.bump
