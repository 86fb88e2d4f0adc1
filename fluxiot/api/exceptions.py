"""One error shape for the whole API: ``{"detail": ...}`` or field errors, always with a 4xx."""

from __future__ import annotations

import logging
from typing import Any

from django.core.exceptions import ValidationError as DjangoValidationError
from django.db import IntegrityError
from django.db.models import ProtectedError
from rest_framework import exceptions, status
from rest_framework.response import Response
from rest_framework.views import exception_handler as drf_exception_handler

from fluxiot.errors import ConflictError

logger = logging.getLogger(__name__)


def exception_handler(exc: Exception, context: dict[str, Any]) -> Response | None:
    """DRF's handler, plus model validation errors and constraint races turned into 400/409."""
    if isinstance(exc, DjangoValidationError):
        detail = exc.message_dict if hasattr(exc, "error_dict") else {"detail": exc.messages}
        exc = exceptions.ValidationError(detail)
    elif isinstance(exc, ConflictError):
        return Response({"detail": str(exc)}, status=status.HTTP_409_CONFLICT)
    elif isinstance(exc, ProtectedError):
        names = sorted({str(obj._meta.verbose_name_plural) for obj in exc.protected_objects})
        return Response(
            {"detail": f"Cannot delete: still referenced by {', '.join(names)}."}, status=status.HTTP_409_CONFLICT
        )
    elif isinstance(exc, IntegrityError):
        # A unique constraint lost a race with a concurrent request: the client can retry or fix.
        logger.info("integrity error answered as 409: %s", exc)
        return Response({"detail": "Conflict with the current state of the resource."}, status=status.HTTP_409_CONFLICT)
    return drf_exception_handler(exc, context)
