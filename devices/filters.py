"""Filter sets of the registry, shared by the API and any list page."""

from __future__ import annotations

from django.db.models import Q, QuerySet
from django_filters import rest_framework as filters

from devices.choices import ActivationState, DeviceStatus, DeviceType, Protocol
from devices.models import Device, DeviceGroup, normalize_fingerprint


class CommaListFilter(filters.CharFilter):
    """``?tags=a,b`` → ``["a", "b"]``."""

    def filter(self, qs: QuerySet, value: str) -> QuerySet:
        if not value:
            return qs
        items = [item.strip() for item in value.split(",") if item.strip()]
        return qs.filter(**{f"{self.field_name}__{self.lookup_expr}": items})


class DeviceFilterSet(filters.FilterSet):
    q = filters.CharFilter(method="search", label="Text search on id and name")
    # No filter here joins a many-valued relation, so none needs DISTINCT (django-filter's default
    # for multiple-choice filters, which would sort every column of every row).
    device_type = filters.MultipleChoiceFilter(choices=DeviceType.choices, distinct=False)
    custom_type = filters.CharFilter()
    status = filters.MultipleChoiceFilter(choices=DeviceStatus.choices, distinct=False)
    protocol = filters.MultipleChoiceFilter(choices=Protocol.choices, distinct=False)
    activation_state = filters.MultipleChoiceFilter(choices=ActivationState.choices, distinct=False)
    group = filters.ModelMultipleChoiceFilter(
        queryset=DeviceGroup.objects.all(), label="In these groups (directly)", distinct=False
    )
    in_group = filters.ModelChoiceFilter(
        queryset=DeviceGroup.objects.all(), method="filter_in_group", label="In this group or any group below it"
    )
    ungrouped = filters.BooleanFilter(field_name="group", lookup_expr="isnull")
    tags = CommaListFilter(field_name="tags", lookup_expr="has_any", label="Has any of these tags (comma-separated)")
    tags_all = CommaListFilter(field_name="tags", lookup_expr="has_all", label="Has all these tags (comma-separated)")
    created_after = filters.IsoDateTimeFilter(field_name="created_at", lookup_expr="gte")
    created_before = filters.IsoDateTimeFilter(field_name="created_at", lookup_expr="lt")
    last_seen_after = filters.IsoDateTimeFilter(field_name="last_seen_at", lookup_expr="gte")
    last_seen_before = filters.IsoDateTimeFilter(field_name="last_seen_at", lookup_expr="lt")
    cert_fingerprint = filters.CharFilter(method="filter_fingerprint")

    class Meta:
        model = Device
        fields = ["id", "name"]

    def search(self, qs: QuerySet, name: str, value: str) -> QuerySet:
        value = value.strip()
        return qs.filter(Q(id__icontains=value) | Q(name__icontains=value)) if value else qs

    def filter_fingerprint(self, qs: QuerySet, name: str, value: str) -> QuerySet:
        return qs.filter(cert_fingerprint=normalize_fingerprint(value)) if value else qs

    def filter_in_group(self, qs: QuerySet, name: str, value: DeviceGroup | None) -> QuerySet:
        if value is None:
            return qs
        # The subtree's ids as literals: with a subquery PostgreSQL rescans the tag index once per
        # group of the subtree (measured: 10 ms against 1.5 ms for the count of a 1,100-device tree).
        subtree = list(DeviceGroup.objects.filter(path__startswith=value.path).values_list("pk", flat=True))
        return qs.filter(group__in=subtree)


class DeviceGroupFilterSet(filters.FilterSet):
    q = filters.CharFilter(method="search", label="Text search on name and description")
    parent = filters.ModelChoiceFilter(queryset=DeviceGroup.objects.all())
    root = filters.BooleanFilter(field_name="parent", lookup_expr="isnull", label="Top-level groups only")
    within = filters.ModelChoiceFilter(
        queryset=DeviceGroup.objects.all(), method="filter_within", label="Below this group (descendants)"
    )

    class Meta:
        model = DeviceGroup
        fields = ["name"]

    def search(self, qs: QuerySet, name: str, value: str) -> QuerySet:
        value = value.strip()
        return qs.filter(Q(name__icontains=value) | Q(description__icontains=value)) if value else qs

    def filter_within(self, qs: QuerySet, name: str, value: DeviceGroup | None) -> QuerySet:
        return qs.filter(path__startswith=value.path).exclude(pk=value.pk) if value else qs
