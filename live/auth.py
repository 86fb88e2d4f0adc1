"""Authentication of a WebSocket connection by JWT access token (the session cookie is resolved by
Channels' ``AuthMiddlewareStack`` before the consumer runs)."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from channels.db import database_sync_to_async
from rest_framework.exceptions import AuthenticationFailed
from rest_framework_simplejwt.authentication import JWTAuthentication
from rest_framework_simplejwt.exceptions import ExpiredTokenError, TokenError
from rest_framework_simplejwt.tokens import AccessToken

logger = logging.getLogger(__name__)

# An access token is a few hundred bytes; anything much longer is not one of ours.
MAX_TOKEN_LENGTH = 4096


class AuthError(Exception):
    """Authentication failed; ``reason`` goes into the 4401 close frame (at most 123 bytes)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True)
class TokenLogin:
    user: Any
    expires_at: float  # epoch seconds (the token's exp claim)


def _user_for(token: AccessToken) -> Any:
    # The API's own lookup: the user must exist and be active, and (with CHECK_REVOKE_TOKEN) the
    # password must not have changed since the token was issued.
    return JWTAuthentication().get_user(token)


async def authenticate_token(raw: Any) -> TokenLogin:
    """Validate a JWT access token the way the REST API does; raises AuthError."""
    if not isinstance(raw, str) or not raw or len(raw) > MAX_TOKEN_LENGTH:
        raise AuthError("invalid token")
    try:
        token = AccessToken(raw)
    except ExpiredTokenError as exc:
        raise AuthError("token expired") from exc
    except TokenError as exc:
        raise AuthError("token expired" if "expired" in str(exc) else "invalid token") from exc
    try:
        user = await database_sync_to_async(_user_for)(token)
    except AuthenticationFailed as exc:
        logger.info("live: token refused: %s", exc.detail)
        raise AuthError("invalid token: unknown or inactive user") from exc
    return TokenLogin(user=user, expires_at=float(token["exp"]))
