"""Filter sets of scenes and their executions (the API's)."""

from __future__ import annotations

from django_filters import rest_framework as filters

from control.scenes.choices import Branch, ExecutionStatus, RunKind
from control.scenes.models import Scene, SceneExecution


class SceneFilterSet(filters.FilterSet):
    enabled = filters.BooleanFilter()
    name = filters.CharFilter(lookup_expr="icontains")

    class Meta:
        model = Scene
        fields = ["enabled", "name"]


class SceneExecutionFilterSet(filters.FilterSet):
    scene = filters.NumberFilter(field_name="scene_id")
    branch = filters.MultipleChoiceFilter(choices=Branch.choices, distinct=False)
    status = filters.MultipleChoiceFilter(choices=ExecutionStatus.choices, distinct=False)
    kind = filters.ChoiceFilter(field_name="trigger__kind", choices=RunKind.choices, label="trigger kind")
    failed = filters.BooleanFilter(method="filter_failed", label="with failed actions")
    started_after = filters.IsoDateTimeFilter(field_name="started_at", lookup_expr="gte")
    started_before = filters.IsoDateTimeFilter(field_name="started_at", lookup_expr="lt")

    class Meta:
        model = SceneExecution
        fields = ["scene", "branch", "status", "kind", "failed", "started_after", "started_before"]

    def filter_failed(self, queryset, name, value):  # noqa: ANN001, ANN201 — django-filter's signature
        return queryset.filter(failed_actions__gt=0) if value else queryset.filter(failed_actions=0)
