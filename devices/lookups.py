"""Tag lookups that work on PostgreSQL (GIN-indexed JSONB operators) and SQLite (json_each).

``Device.objects.filter(tags__has_any=["lab", "roof"])`` and ``tags__has_all=[...]``.
"""

from __future__ import annotations

import json
from typing import Any

from django.db.models import Lookup

from devices.fields import TagsField


class _TagsLookup(Lookup):
    prepare_rhs = False
    # SQL for each backend; {lhs} is the column, {n} the number of tags, {ph} their placeholders.
    postgres_sql = ""
    sqlite_sql = ""
    empty_sql = ""

    def postgres_param(self, tags: list[str]) -> Any:
        return tags

    def _tags(self) -> list[str]:
        tags = self.rhs
        if isinstance(tags, str):
            tags = [tags]
        if not isinstance(tags, (list, tuple)) or not all(isinstance(t, str) for t in tags):
            raise TypeError(f"{self.lookup_name} takes a list of strings")
        return list(dict.fromkeys(tags))

    def as_sql(self, compiler: Any, connection: Any) -> tuple[str, list[Any]]:
        lhs, lhs_params = self.process_lhs(compiler, connection)
        tags = self._tags()
        if not tags:
            return self.empty_sql, []
        if connection.vendor == "postgresql":
            return self.postgres_sql.format(lhs=lhs), [*lhs_params, self.postgres_param(tags)]
        placeholders = ", ".join(["%s"] * len(tags))
        return self.sqlite_sql.format(lhs=lhs, ph=placeholders, n=len(tags)), [*lhs_params, *tags]


@TagsField.register_lookup
class HasAllTags(_TagsLookup):
    lookup_name = "has_all"
    postgres_sql = "{lhs} @> %s::jsonb"
    sqlite_sql = "(SELECT COUNT(DISTINCT je.value) FROM json_each({lhs}) je WHERE je.value IN ({ph})) = {n}"
    empty_sql = "1=1"  # nothing asked for: vacuously true

    def postgres_param(self, tags: list[str]) -> Any:
        return json.dumps(tags)


@TagsField.register_lookup
class HasAnyTag(_TagsLookup):
    lookup_name = "has_any"
    postgres_sql = "{lhs} ?| %s::text[]"
    sqlite_sql = "EXISTS (SELECT 1 FROM json_each({lhs}) je WHERE je.value IN ({ph}))"
    empty_sql = "1=0"
