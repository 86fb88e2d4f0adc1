"""Domain errors that services raise and every surface (API, admin) knows how to present."""


class ConflictError(Exception):
    """The request is valid but conflicts with the object's current state (HTTP 409)."""
