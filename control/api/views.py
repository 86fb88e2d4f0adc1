from __future__ import annotations

from typing import Any

from django.db.models import QuerySet
from django.shortcuts import get_object_or_404
from drf_spectacular.utils import extend_schema
from rest_framework import mixins, status, viewsets
from rest_framework.request import Request
from rest_framework.response import Response

from control import services
from control.api.serializers import (
    CommandBatchSerializer,
    CommandTypeSerializer,
    DeviceCommandDetailSerializer,
    DeviceCommandSerializer,
    SendBatchSerializer,
    SendCommandSerializer,
)
from control.filters import CommandBatchFilterSet, DeviceCommandFilterSet
from control.models import CommandBatch, DeviceCommand
from control.schemas import catalogue
from devices.models import Device

SEND = ["control.add_devicecommand", "control.send_command"]
COMMAND_ORDERING = ["created_at", "sent_at", "completed_at", "status"]


class DeviceCommandViewSet(mixins.ListModelMixin, mixins.CreateModelMixin, viewsets.GenericViewSet):
    """``devices/{id}/commands/``: a device's command history (newest first, filterable), and sending
    it a command. A command for an online device is published before the answer comes back (its
    status is then ``sent``); for an offline one it waits, ``pending``."""

    serializer_class = DeviceCommandSerializer
    filterset_class = DeviceCommandFilterSet
    ordering_fields = COMMAND_ORDERING
    queryset = DeviceCommand.objects.select_related("created_by")
    action_perms = {"create": SEND}

    def get_device(self) -> Device:
        return get_object_or_404(Device, pk=self.kwargs["device_id"])

    def get_queryset(self) -> QuerySet[DeviceCommand]:
        return super().get_queryset().filter(device=self.get_device())

    @extend_schema(request=SendCommandSerializer, responses={201: DeviceCommandSerializer})
    def create(self, request: Request, *args: Any, **kwargs: Any) -> Response:
        device = self.get_device()
        form = SendCommandSerializer(data=request.data)
        form.is_valid(raise_exception=True)
        data = form.validated_data
        command = services.send_command(
            device,
            data["type"],
            data["params"],
            timeout=data.get("timeout"),
            expires_at=data.get("expires_at"),
            actor=request.user,
        )
        command.refresh_from_db(fields=["status", "sent_at", "deadline_at", "completed_at", "error"])
        return Response(DeviceCommandSerializer(command).data, status=status.HTTP_201_CREATED)


class CommandViewSet(
    mixins.ListModelMixin, mixins.RetrieveModelMixin, mixins.DestroyModelMixin, viewsets.GenericViewSet
):
    """Every command (filter by device, status, type, batch, creation time). ``DELETE`` cancels a
    command that is not finished (409 when it is) and answers with the cancelled command."""

    queryset = DeviceCommand.objects.select_related("created_by")
    serializer_class = DeviceCommandSerializer
    filterset_class = DeviceCommandFilterSet
    ordering_fields = COMMAND_ORDERING
    action_perms = {"destroy": ["control.send_command"]}

    def get_serializer_class(self) -> type:
        return DeviceCommandDetailSerializer if self.action == "retrieve" else DeviceCommandSerializer

    def get_queryset(self) -> QuerySet[DeviceCommand]:
        queryset = super().get_queryset()
        return queryset.prefetch_related("replies") if self.action == "retrieve" else queryset

    @extend_schema(responses={200: DeviceCommandSerializer})
    def destroy(self, request: Request, *args: Any, **kwargs: Any) -> Response:
        command = services.cancel_command(self.get_object(), actor=request.user)
        return Response(DeviceCommandSerializer(command).data)


class CommandBatchViewSet(
    mixins.ListModelMixin, mixins.RetrieveModelMixin, mixins.CreateModelMixin, viewsets.GenericViewSet
):
    """Batches: one command to many devices. Created at ``devices/batch/commands/`` with ``targets``
    (``{"devices": [...]}``, ``{"group": id, "include_descendants": true}`` or
    ``{"tags": [...], "match": "any"|"all"}``); each shows its commands counted per status."""

    queryset = CommandBatch.objects.select_related("created_by")
    serializer_class = CommandBatchSerializer
    filterset_class = CommandBatchFilterSet
    ordering_fields = ["created_at", "total"]
    action_perms = {"create": SEND}

    @extend_schema(request=SendBatchSerializer, responses={201: CommandBatchSerializer})
    def create(self, request: Request, *args: Any, **kwargs: Any) -> Response:
        form = SendBatchSerializer(data=request.data)
        form.is_valid(raise_exception=True)
        data = form.validated_data
        batch = services.send_batch(
            data["type"],
            data["params"],
            data["targets"],
            timeout=data.get("timeout"),
            expires_at=data.get("expires_at"),
            actor=request.user,
        )
        return Response(CommandBatchSerializer(batch).data, status=status.HTTP_201_CREATED)


class CommandTypeViewSet(viewsets.GenericViewSet):
    """The command catalogue: each type's params schema, an example, and the device types that
    accept it."""

    queryset = DeviceCommand.objects.none()  # for the permission check: reading needs view_devicecommand
    serializer_class = CommandTypeSerializer
    pagination_class = None
    filter_backends: list[Any] = []

    def list(self, request: Request) -> Response:
        return Response(catalogue())
