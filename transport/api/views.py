"""HTTP ingest: the MQTT contract's uplink payloads over HTTP, with the device secret as bearer token."""

from __future__ import annotations

import logging
import time

from django.conf import settings
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiResponse, extend_schema
from rest_framework import status
from rest_framework.parsers import BaseParser
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from devices.services import verify_device_secret
from telemetry import services as telemetry_services
from transport import handoff

logger = logging.getLogger(__name__)


class RawBodyParser(BaseParser):
    """Keep the body as bytes: it is validated exactly as an MQTT payload would be."""

    media_type = "*/*"

    def parse(self, stream, media_type=None, parser_context=None):  # noqa: ANN001, ANN201 (DRF signature)
        return stream.read()


class DeviceIngestView(APIView):
    """Base for the device-facing HTTP endpoints: authenticated by the device's own secret."""

    authentication_classes: list = []
    permission_classes: list = []
    parser_classes = [RawBodyParser]
    throttle_classes: list = []
    kind = ""  # subclasses name the topic kind and define check(payload, device_id)

    @extend_schema(
        request={"application/json": OpenApiTypes.OBJECT},
        responses={
            202: OpenApiResponse(description="Accepted for ingestion."),
            400: OpenApiResponse(description="Rejected: {detail, reason}."),
            401: OpenApiResponse(description="Missing or wrong device secret."),
        },
        auth=[],
    )
    def post(self, request: Request, device_id: str) -> Response:
        header = request.META.get("HTTP_AUTHORIZATION", "")
        scheme, _, secret = header.partition(" ")
        if scheme.lower() != "bearer" or not verify_device_secret(device_id, secret.strip()):
            return Response(
                {"detail": "A valid device secret is required as a bearer token."},
                status=status.HTTP_401_UNAUTHORIZED,
                headers={"WWW-Authenticate": 'Bearer realm="device"'},
            )
        payload = request.body
        if len(payload) > settings.INGEST_MAX_PAYLOAD_BYTES:
            return Response(
                {"detail": f"Payload over {settings.INGEST_MAX_PAYLOAD_BYTES} bytes.", "reason": "payload_too_large"},
                status=status.HTTP_413_REQUEST_ENTITY_TOO_LARGE,
            )
        try:
            self.check(payload, device_id)
        except telemetry_services.Reject as reject:
            return Response({"detail": reject.detail, "reason": reject.reason}, status=status.HTTP_400_BAD_REQUEST)
        handoff.hand_off([[f"devices/{device_id}/{self.kind}", payload, int(time.time() * 1000)]])
        return Response({"detail": "Accepted."}, status=status.HTTP_202_ACCEPTED)


class TelemetryIngestView(DeviceIngestView):
    """Telemetry from a device: a JSON object (optional "ts") or a list of them."""

    kind = "telemetry"

    def check(self, payload: bytes, device_id: str) -> None:
        from django.utils import timezone

        telemetry_services.parse_telemetry(device_id, payload, timezone.now())


class AttributesIngestView(DeviceIngestView):
    """Client attributes from a device (firmware, model…), merged into the device."""

    kind = "attributes"

    def check(self, payload: bytes, device_id: str) -> None:
        telemetry_services.parse_attributes(payload)
