"""Celery tasks of the rules app (Celery's autodiscovery imports this module)."""

from rules.actions import post_webhook

__all__ = ["post_webhook"]
