from __future__ import annotations

from datetime import timedelta

from django.shortcuts import get_object_or_404
from django.utils import timezone
from drf_spectacular.utils import extend_schema
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from devices.models import Device
from fluxiot.api.permissions import ModelPermissions
from telemetry.api.serializers import LatestValuesSerializer, RangeQuerySerializer, RangeResultSerializer
from telemetry.models import TelemetryPoint


class DeviceMetricsView(APIView):
    """The device's latest value of every key."""

    queryset = Device.objects.all()  # for ModelPermissions: reading needs devices.view_device
    permission_classes = [ModelPermissions]

    @extend_schema(responses={200: LatestValuesSerializer})
    def get(self, request: Request, device_id: str) -> Response:
        device = get_object_or_404(Device.objects.only("id", "last_seen_at"), pk=device_id)
        values = {
            latest.key: {"ts": latest.ts, "value": latest.value}
            for latest in device.latest_values.order_by("key").only("key", "ts", "value")
        }
        return Response(
            LatestValuesSerializer({"device": device.id, "last_seen_at": device.last_seen_at, "values": values}).data
        )


class TelemetryRangeView(APIView):
    """Raw points of one key of one device in a time range, oldest first."""

    queryset = Device.objects.all()
    permission_classes = [ModelPermissions]

    @extend_schema(parameters=[RangeQuerySerializer], responses={200: RangeResultSerializer})
    def get(self, request: Request) -> Response:
        query = RangeQuerySerializer(data=request.query_params)
        query.is_valid(raise_exception=True)
        params = query.validated_data
        device = get_object_or_404(Device.objects.only("id"), pk=params["device"])
        end = params.get("end") or timezone.now()
        start = params.get("start") or end - timedelta(hours=24)
        limit = params["limit"]
        rows = list(
            TelemetryPoint.objects.filter(device_id=device.id, key=params["key"], ts__gte=start, ts__lt=end)
            .order_by("ts")
            .values_list("ts", "value_num", "value_bool", "value_str", "value_json")[: limit + 1]
        )
        points = [{"ts": ts, "value": next((v for v in values if v is not None), None)} for ts, *values in rows[:limit]]
        return Response(
            RangeResultSerializer(
                {
                    "device": device.id,
                    "key": params["key"],
                    "start": start,
                    "end": end,
                    "points": points,
                    "truncated": len(rows) > limit,
                }
            ).data
        )
