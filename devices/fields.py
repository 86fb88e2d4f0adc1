from django.db import models


class TagsField(models.JSONField):
    """A JSON list of tag strings, with the ``has_any`` / ``has_all`` lookups (see lookups.py)."""
