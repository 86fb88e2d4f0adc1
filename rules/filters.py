"""Filter sets of rules and plugins, shared by the API and any list page."""

from __future__ import annotations

from django.db.models import Q, QuerySet
from django_filters import rest_framework as filters

from rules.choices import PluginStage, Scope, Trigger
from rules.models import Plugin, Rule


class RuleFilterSet(filters.FilterSet):
    q = filters.CharFilter(method="search", label="Text search on name, description and condition")
    enabled = filters.BooleanFilter()
    trigger = filters.MultipleChoiceFilter(choices=Trigger.choices, distinct=False)
    scope = filters.MultipleChoiceFilter(choices=Scope.choices, distinct=False)
    scope_value = filters.CharFilter()
    failing = filters.BooleanFilter(method="filter_failing", label="Rules whose evaluation or actions have failed")

    class Meta:
        model = Rule
        fields = ["name"]

    def search(self, qs: QuerySet, name: str, value: str) -> QuerySet:
        value = value.strip()
        if not value:
            return qs
        return qs.filter(Q(name__icontains=value) | Q(description__icontains=value) | Q(condition__icontains=value))

    def filter_failing(self, qs: QuerySet, name: str, value: bool | None) -> QuerySet:
        if value is None:
            return qs
        return qs.filter(failed__gt=0) if value else qs.filter(failed=0)


class PluginFilterSet(filters.FilterSet):
    q = filters.CharFilter(method="search", label="Text search on name and description")
    enabled = filters.BooleanFilter()
    stage = filters.MultipleChoiceFilter(choices=PluginStage.choices, distinct=False)
    scope = filters.MultipleChoiceFilter(choices=Scope.choices, distinct=False)
    sha256 = filters.CharFilter(method="filter_sha256")

    class Meta:
        model = Plugin
        fields = ["name", "version"]

    def search(self, qs: QuerySet, name: str, value: str) -> QuerySet:
        value = value.strip()
        return qs.filter(Q(name__icontains=value) | Q(description__icontains=value)) if value else qs

    def filter_sha256(self, qs: QuerySet, name: str, value: str) -> QuerySet:
        return qs.filter(sha256=value.strip().lower()) if value else qs
