from __future__ import annotations

from typing import Any

from django.conf import settings
from django.db.models import Count, QuerySet
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, OpenApiResponse, extend_schema
from rest_framework import status, viewsets
from rest_framework.decorators import action
from rest_framework.parsers import FormParser, JSONParser, MultiPartParser
from rest_framework.request import Request
from rest_framework.response import Response

from devices import importers, services
from devices.api.serializers import (
    DeviceGroupSerializer,
    DeviceSerializer,
    DeviceStatusChangeSerializer,
    DeviceStatusSerializer,
    ImportErrorSerializer,
    ImportRequestSerializer,
    ImportResultSerializer,
    MoveDevicesSerializer,
    SecretSerializer,
    SetStatusSerializer,
)
from devices.filters import DeviceFilterSet, DeviceGroupFilterSet
from devices.models import Device, DeviceGroup

STATUS_HISTORY_LENGTH = 20

DEVICE_ORDERING = ["id", "name", "device_type", "status", "created_at", "updated_at", "last_seen_at"]


class DeviceViewSet(viewsets.ModelViewSet):
    """Devices of the registry. Lists filter by type, status, protocol, activation state, group
    (``group`` directly, ``in_group`` with descendants), tags (``tags`` any, ``tags_all`` all), text
    (``q``) and time ranges; ``ordering`` by any of the listed fields."""

    queryset = Device.objects.select_related("group")
    serializer_class = DeviceSerializer
    filterset_class = DeviceFilterSet
    ordering_fields = DEVICE_ORDERING
    lookup_value_regex = "[^/]+"
    action_perms = {
        "activate": ["devices.activate_device"],
        "disable": ["devices.activate_device"],
        "rotate_credentials": ["devices.activate_device"],
        "device_status": ["devices.view_device"],
        "set_device_status": ["devices.change_device"],
        "import_devices": ["devices.add_device"],
    }

    def perform_create(self, serializer: DeviceSerializer) -> None:
        serializer.instance = services.create_device(actor=self.request.user, **serializer.validated_data)

    def perform_update(self, serializer: DeviceSerializer) -> None:
        serializer.instance = services.update_device(
            serializer.instance, actor=self.request.user, **serializer.validated_data
        )

    def perform_destroy(self, instance: Device) -> None:
        services.delete_device(instance, actor=self.request.user)

    @extend_schema(request=None, responses={200: SecretSerializer, 409: OpenApiResponse(description="Already active.")})
    @action(detail=True, methods=["post"])
    def activate(self, request: Request, pk: str | None = None) -> Response:
        """Activate the device and issue its secret. The secret is in this answer only."""
        device = self.get_object()
        secret = services.activate_device(device, actor=request.user)
        return Response({"id": device.id, "secret": secret})

    @extend_schema(request=None, responses={200: SecretSerializer, 409: OpenApiResponse(description="Not active.")})
    @action(detail=True, methods=["post"], url_path="rotate-credentials")
    def rotate_credentials(self, request: Request, pk: str | None = None) -> Response:
        """Issue a new secret; the old one stops working at once. The secret is in this answer only."""
        device = self.get_object()
        secret = services.rotate_credentials(device, actor=request.user)
        return Response({"id": device.id, "secret": secret})

    @extend_schema(request=None, responses={200: DeviceSerializer})
    @action(detail=True, methods=["post"])
    def disable(self, request: Request, pk: str | None = None) -> Response:
        """Disable the device: its secret stops working and is forgotten."""
        device = self.get_object()
        services.disable_device(device, actor=request.user)
        device.refresh_from_db()
        return Response(DeviceSerializer(device).data)

    @extend_schema(responses={200: DeviceStatusSerializer})
    @action(detail=True, methods=["get"], url_path="status")
    def device_status(self, request: Request, pk: str | None = None) -> Response:
        """Current status, last seen time and the most recent status changes."""
        device = self.get_object()
        history = device.status_changes.select_related("changed_by")[:STATUS_HISTORY_LENGTH]
        return Response(
            {
                "id": device.id,
                "status": device.status,
                "last_seen_at": device.last_seen_at,
                "history": DeviceStatusChangeSerializer(history, many=True).data,
            }
        )

    @extend_schema(request=SetStatusSerializer, responses={200: DeviceStatusSerializer})
    @device_status.mapping.post
    def set_device_status(self, request: Request, pk: str | None = None) -> Response:
        """Set the status by hand (for example ``maintenance``), with a reason for the history."""
        device = self.get_object()
        serializer = SetStatusSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        services.set_status(
            device, serializer.validated_data["status"], actor=request.user, reason=serializer.validated_data["reason"]
        )
        device.refresh_from_db()
        return self.device_status(request, pk)

    @extend_schema(
        request={"multipart/form-data": ImportRequestSerializer, "application/json": OpenApiTypes.OBJECT},
        responses={201: ImportResultSerializer, 400: ImportErrorSerializer},
    )
    @action(detail=False, methods=["post"], url_path="import", parser_classes=[MultiPartParser, FormParser, JSONParser])
    def import_devices(self, request: Request) -> Response:
        """Create many devices from a CSV or JSON file (multipart field ``file``) or a JSON body
        (a list of devices). All or nothing: any bad row fails the import with a row-by-row report."""
        max_rows = settings.DEVICE_IMPORT_MAX_ROWS
        try:
            upload = request.FILES.get("file")
            if upload is not None:
                if upload.size > settings.DEVICE_IMPORT_MAX_BYTES:
                    raise importers.ParseError(f"The file is over {settings.DEVICE_IMPORT_MAX_BYTES} bytes.")
                rows, cell_errors = importers.parse_import(
                    upload.read(), filename=upload.name or "", content_type=upload.content_type or "", max_rows=max_rows
                )
            elif request.content_type.startswith("application/json"):
                rows, cell_errors = importers.parse_json(request.body, max_rows=max_rows), []
            else:
                raise importers.ParseError("Send a file in the multipart field 'file', or a JSON list of devices.")
        except importers.ParseError as exc:
            return Response({"detail": str(exc)}, status=status.HTTP_400_BAD_REQUEST)
        if not rows:
            return Response({"detail": "The file has no devices."}, status=status.HTTP_400_BAD_REQUEST)
        try:
            result = services.import_devices(rows, actor=request.user, known_errors=cell_errors)
        except services.ImportFailed as exc:
            return Response(
                {"detail": services.import_failure_summary(exc.errors), "errors": exc.errors},
                status=status.HTTP_400_BAD_REQUEST,
            )
        return Response({"created": result.created, "ids": result.ids}, status=status.HTTP_201_CREATED)


class DeviceGroupViewSet(viewsets.ModelViewSet):
    """The group tree. Moving a group under its own descendant is refused; a group with children or
    devices cannot be deleted (409)."""

    queryset = DeviceGroup.objects.annotate(device_count=Count("devices")).order_by("path")
    serializer_class = DeviceGroupSerializer
    filterset_class = DeviceGroupFilterSet
    ordering_fields = ["id", "name", "path", "created_at"]
    action_perms = {
        "devices": ["devices.view_devicegroup", "devices.view_device"],
        "move_devices": ["devices.change_device"],
    }

    def perform_create(self, serializer: DeviceGroupSerializer) -> None:
        serializer.instance = services.save_group(DeviceGroup(**serializer.validated_data), actor=self.request.user)

    def perform_update(self, serializer: DeviceGroupSerializer) -> None:
        for name, value in serializer.validated_data.items():
            setattr(serializer.instance, name, value)
        services.save_group(serializer.instance, actor=self.request.user)

    def perform_destroy(self, instance: DeviceGroup) -> None:
        services.delete_group(instance, actor=self.request.user)

    def get_serializer_class(self) -> type:
        return DeviceSerializer if self.action == "devices" else super().get_serializer_class()

    def filter_queryset(self, queryset: QuerySet) -> QuerySet:
        if self.action == "devices":
            return queryset  # the devices list filters itself, below
        return super().filter_queryset(queryset)

    @extend_schema(
        parameters=[
            OpenApiParameter("descendants", bool, description="Include devices of every group below this one."),
        ],
        responses={200: DeviceSerializer(many=True)},
        filters=True,
    )
    @action(detail=True, methods=["get"])
    def devices(self, request: Request, pk: str | None = None) -> Response:
        """The group's devices (``?descendants=true``: and those of every group below it), with the
        device list's filters."""
        group = self.get_object()
        descendants = request.query_params.get("descendants", "").lower() in ("1", "true", "yes")
        queryset = services.devices_in_group(group, descendants=descendants).select_related("group")
        filterset = DeviceFilterSet(request.query_params, queryset=queryset, request=request)
        if not filterset.is_valid():
            from django_filters.utils import translate_validation

            raise translate_validation(filterset.errors)
        queryset = filterset.qs
        ordering = request.query_params.get("ordering", "")
        if ordering.lstrip("-") in DEVICE_ORDERING:
            queryset = queryset.order_by(ordering)
        page = self.paginate_queryset(queryset)
        return self.get_paginated_response(DeviceSerializer(page, many=True).data)

    @extend_schema(request=MoveDevicesSerializer, responses={200: OpenApiTypes.OBJECT})
    @action(detail=True, methods=["post"], url_path="move-devices")
    def move_devices(self, request: Request, pk: str | None = None) -> Response:
        """Move the listed devices into this group."""
        group = self.get_object()
        serializer = MoveDevicesSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        ids: list[Any] = serializer.validated_data["devices"]
        known = set(Device.objects.filter(pk__in=ids).values_list("pk", flat=True))
        unknown = [i for i in ids if i not in known]
        if unknown:
            return Response(
                {"devices": [f"Unknown devices: {', '.join(unknown[:20])}"]}, status=status.HTTP_400_BAD_REQUEST
            )
        moved = services.move_devices(ids, group, actor=request.user)
        return Response({"moved": moved})
