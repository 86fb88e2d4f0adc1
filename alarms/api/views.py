from __future__ import annotations

from typing import Any

from drf_spectacular.utils import OpenApiResponse, extend_schema
from rest_framework import mixins, status, viewsets
from rest_framework.decorators import action
from rest_framework.request import Request
from rest_framework.response import Response

from alarms import notifications, services
from alarms.api.serializers import (
    AlarmSerializer,
    ClearAlarmSerializer,
    NotificationChannelSerializer,
    NotificationDeliverySerializer,
    NotificationRuleSerializer,
    RaiseAlarmSerializer,
)
from alarms.choices import Transition
from alarms.filters import AlarmFilterSet, NotificationDeliveryFilterSet
from alarms.models import Alarm, NotificationChannel, NotificationDelivery, NotificationRule

CONFLICT = OpenApiResponse(description="Not possible in the alarm's current status (already acknowledged or cleared).")


class AlarmViewSet(mixins.ListModelMixin, mixins.RetrieveModelMixin, viewsets.GenericViewSet):
    """Alarms, newest first (filter by severity, status, active, device, group with the groups below it,
    type, start time). ``POST`` raises one by hand: a device's active alarm of that type is raised
    again (200, its count bumped) rather than a second one created (201). ``ack/`` and ``clear/``
    answer 409 when the alarm already is acknowledged or cleared."""

    queryset = Alarm.objects.select_related("device", "raised_by", "acknowledged_by", "cleared_by")
    serializer_class = AlarmSerializer
    filterset_class = AlarmFilterSet
    ordering_fields = ["started_at", "last_raised_at", "ended_at", "severity", "count", "id"]
    lookup_value_regex = "[0-9]+"
    action_perms = {
        "create": ["alarms.view_alarm", "alarms.add_alarm"],
        "ack": ["alarms.view_alarm", "alarms.acknowledge_alarm"],
        "clear": ["alarms.view_alarm", "alarms.change_alarm"],
    }

    @extend_schema(
        request=RaiseAlarmSerializer,
        responses={201: AlarmSerializer, 200: OpenApiResponse(AlarmSerializer, description="Raised again.")},
    )
    def create(self, request: Request, *args: Any, **kwargs: Any) -> Response:
        form = RaiseAlarmSerializer(data=request.data)
        form.is_valid(raise_exception=True)
        data = form.validated_data
        alarm = services.raise_alarm(
            data["device"],
            data["type"],
            data["severity"],
            details=data["details"],
            source="manual",
            actor=request.user,
        )
        created = alarm.transition == Transition.RAISED
        return Response(self._fresh(alarm), status=status.HTTP_201_CREATED if created else status.HTTP_200_OK)

    def _fresh(self, alarm: Alarm) -> dict[str, Any]:
        return AlarmSerializer(self.get_queryset().get(pk=alarm.pk)).data

    @extend_schema(request=None, responses={200: AlarmSerializer, 409: CONFLICT})
    @action(detail=True, methods=["post"])
    def ack(self, request: Request, pk: str | None = None) -> Response:
        """Acknowledge the alarm (active or cleared)."""
        alarm = services.acknowledge(self.get_object(), actor=request.user)
        return Response(self._fresh(alarm))

    @extend_schema(request=ClearAlarmSerializer, responses={200: AlarmSerializer, 409: CONFLICT})
    @action(detail=True, methods=["post"])
    def clear(self, request: Request, pk: str | None = None) -> Response:
        """Clear the alarm by hand, with an optional reason."""
        form = ClearAlarmSerializer(data=request.data)
        form.is_valid(raise_exception=True)
        alarm = services.clear(self.get_object(), actor=request.user, reason=form.validated_data["reason"])
        return Response(self._fresh(alarm))


class NotificationChannelViewSet(viewsets.ModelViewSet):
    """Where notifications go: ``email`` (email_addresses, users, groups) or ``webhook`` (url, secret,
    timeout). ``secret`` is write-only. Deleting a channel keeps its delivery log."""

    queryset = NotificationChannel.objects.prefetch_related("users", "groups")
    serializer_class = NotificationChannelSerializer
    filterset_fields = ["kind", "enabled"]
    ordering_fields = ["name", "created_at"]
    lookup_value_regex = "[0-9]+"

    def _save(self, serializer: NotificationChannelSerializer, channel: NotificationChannel) -> None:
        data = dict(serializer.validated_data)
        users, groups = data.pop("users", None), data.pop("groups", None)
        if not data.get("secret") and channel.pk is not None:
            data.pop("secret", None)  # left out or empty in an update: kept
        for name, value in data.items():
            setattr(channel, name, value)
        serializer.instance = notifications.save_channel(channel, actor=self.request.user, users=users, groups=groups)

    def perform_create(self, serializer: NotificationChannelSerializer) -> None:
        self._save(serializer, NotificationChannel())

    def perform_update(self, serializer: NotificationChannelSerializer) -> None:
        self._save(serializer, serializer.instance)


class NotificationRuleViewSet(viewsets.ModelViewSet):
    """Which alarms (types, a minimum severity, a device group with the groups below it) go to which
    channels, on which transitions (raised, escalated, acknowledged, cleared)."""

    queryset = NotificationRule.objects.select_related("group").prefetch_related("channels")
    serializer_class = NotificationRuleSerializer
    filterset_fields = ["enabled", "min_severity", "group"]
    ordering_fields = ["name", "created_at"]
    lookup_value_regex = "[0-9]+"

    def _save(self, serializer: NotificationRuleSerializer, rule: NotificationRule) -> None:
        data = dict(serializer.validated_data)
        channels = data.pop("channels", None)
        for name, value in data.items():
            setattr(rule, name, value)
        serializer.instance = notifications.save_rule(rule, actor=self.request.user, channels=channels)

    def perform_create(self, serializer: NotificationRuleSerializer) -> None:
        self._save(serializer, NotificationRule())

    def perform_update(self, serializer: NotificationRuleSerializer) -> None:
        self._save(serializer, serializer.instance)


class NotificationDeliveryViewSet(mixins.ListModelMixin, mixins.RetrieveModelMixin, viewsets.GenericViewSet):
    """The delivery log: every notification, its attempts and outcome, newest first. ``retry/`` sends a
    dead delivery again (409 for any other)."""

    queryset = NotificationDelivery.objects.all()
    serializer_class = NotificationDeliverySerializer
    filterset_class = NotificationDeliveryFilterSet
    ordering_fields = ["created_at", "sent_at", "attempts", "id"]
    lookup_value_regex = "[0-9]+"
    action_perms = {"retry": ["alarms.view_notificationdelivery", "alarms.change_notificationdelivery"]}

    @extend_schema(
        request=None,
        responses={200: NotificationDeliverySerializer, 409: OpenApiResponse(description="The delivery is not dead.")},
    )
    @action(detail=True, methods=["post"])
    def retry(self, request: Request, pk: str | None = None) -> Response:
        delivery = notifications.retry_delivery(self.get_object())
        delivery.refresh_from_db()
        return Response(NotificationDeliverySerializer(delivery).data)
