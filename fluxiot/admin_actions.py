"""Admin actions shared by the apps' model admins."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from django.contrib import messages
from django.core.exceptions import ValidationError
from django.db.models import QuerySet
from django.http import HttpRequest


def set_enabled(
    request: HttpRequest, queryset: QuerySet, enabled: bool, noun: str, apply: Callable[[Any], None]
) -> None:
    """Enable or disable the selected objects (each with ``name`` and ``enabled``) through their
    service, ``apply(obj)``, which raises ``ValidationError`` for an object that is no longer valid
    (it is left as it was and named in an error message). Objects already in that state are skipped."""
    changed, refused = 0, []
    for obj in queryset:
        if obj.enabled == enabled:
            continue
        try:
            apply(obj)
        except ValidationError as exc:
            refused.append(f"{obj.name} ({'; '.join(exc.messages)})")
            continue
        changed += 1
    messages.success(request, f"{changed} {noun}{'s' if changed != 1 else ''} {'enabled' if enabled else 'disabled'}.")
    if refused:
        messages.error(request, f"Not valid any more, left as they were: {', '.join(refused)}.")
