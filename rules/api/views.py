from __future__ import annotations

from typing import Any

from django.http import HttpResponse
from django.shortcuts import get_object_or_404
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, OpenApiResponse, extend_schema
from rest_framework import status, viewsets
from rest_framework.decorators import action
from rest_framework.parsers import FormParser, JSONParser, MultiPartParser
from rest_framework.request import Request
from rest_framework.response import Response

from rules import actions as rule_actions
from rules import services
from rules.api.serializers import (
    ActionTypeSerializer,
    PluginSerializer,
    RuleDraftTestSerializer,
    RuleSerializer,
    RuleTestResultSerializer,
    RuleVersionSerializer,
    SampleSerializer,
)
from rules.filters import PluginFilterSet, RuleFilterSet
from rules.models import Plugin, Rule, RuleVersion

TEST = ["rules.test_rule"]
RULE_ORDERING = [
    "id",
    "name",
    "priority",
    "trigger",
    "enabled",
    "created_at",
    "updated_at",
    "evaluated",
    "matched",
    "failed",
    "last_matched_at",
]


def _sample(data: Any) -> Any:
    """The body of ``rules/{id}/test/``: the sample itself, or ``{"sample": {...}}``."""
    if isinstance(data, dict) and set(data) == {"sample"}:
        return data["sample"]
    return data


class RuleViewSet(viewsets.ModelViewSet):
    """Rules: a CEL condition over each message of a trigger from devices in a scope, and the actions
    to run when it holds. Every change is a new version (``versions/``), which can be restored.
    ``test/`` says what a rule would do with a sample message, doing nothing."""

    queryset = Rule.objects.select_related("created_by")
    serializer_class = RuleSerializer
    filterset_class = RuleFilterSet
    ordering_fields = RULE_ORDERING
    lookup_value_regex = "[0-9]+"
    action_perms = {
        "test": ["rules.view_rule", *TEST],
        "test_draft": TEST,
        "versions": ["rules.view_rule", "rules.view_ruleversion"],
        "restore": ["rules.view_rule", "rules.change_rule"],
        "action_types": ["rules.view_rule"],
    }

    def perform_create(self, serializer: RuleSerializer) -> None:
        serializer.instance = services.create_rule(self.request.user, **serializer.validated_data)

    def perform_update(self, serializer: RuleSerializer) -> None:
        serializer.instance = services.update_rule(serializer.instance, self.request.user, **serializer.validated_data)

    def perform_destroy(self, instance: Rule) -> None:
        services.delete_rule(instance, self.request.user)

    def get_serializer_class(self) -> type:
        if self.action == "versions":
            return RuleVersionSerializer
        return super().get_serializer_class()

    def filter_queryset(self, queryset: Any) -> Any:
        if self.action in ("versions", "action_types", "test_draft"):
            return queryset
        return super().filter_queryset(queryset)

    @extend_schema(request=SampleSerializer, responses={200: RuleTestResultSerializer})
    @action(detail=True, methods=["post"])
    def test(self, request: Request, pk: str | None = None) -> Response:
        """Evaluate the rule against a sample message (the body; ``{"sample": …}`` works too) and say
        whether it matches and what each action would do. Nothing is sent, stored or counted."""
        rule = self.get_object()
        return Response(services.test_rule(rule, _sample(request.data)))

    @extend_schema(
        operation_id="rules_test_draft", request=RuleDraftTestSerializer, responses={200: RuleTestResultSerializer}
    )
    @action(detail=False, methods=["post"], url_path="test")
    def test_draft(self, request: Request) -> Response:
        """Try an unsaved rule (condition, trigger, actions, scope) on a sample message: the admin's
        "test before saving". A condition that does not compile is a 400 with the compiler's message."""
        data = request.data if isinstance(request.data, dict) else {}
        fields = {
            name: data[name] for name in ("condition", "trigger", "actions", "scope", "scope_value") if name in data
        }
        if "condition" not in fields:
            return Response({"condition": ["This field is required."]}, status=status.HTTP_400_BAD_REQUEST)
        if "sample" not in data:
            return Response({"sample": ["This field is required."]}, status=status.HTTP_400_BAD_REQUEST)
        return Response(services.test_rule(fields, data["sample"]))

    @extend_schema(responses={200: RuleVersionSerializer(many=True)}, filters=False)
    @action(detail=True, methods=["get"])
    def versions(self, request: Request, pk: str | None = None) -> Response:
        """The rule's versions, newest first: who saved what, when."""
        rule = self.get_object()
        queryset = rule.versions.select_related("changed_by").order_by("-version")
        page = self.paginate_queryset(queryset)
        return self.get_paginated_response(RuleVersionSerializer(page, many=True).data)

    @extend_schema(
        request=None,
        parameters=[OpenApiParameter("number", int, OpenApiParameter.PATH, description="The version to restore.")],
        responses={200: RuleSerializer, 404: OpenApiResponse(description="No such version.")},
    )
    @action(detail=True, methods=["post"], url_path=r"versions/(?P<number>[0-9]+)/restore")
    def restore(self, request: Request, pk: str | None = None, number: str | None = None) -> Response:
        """Make the rule what version ``number`` held, as a new version ("restored from version N").
        Nothing changes when it already is."""
        rule = self.get_object()
        version = get_object_or_404(RuleVersion, rule=rule, version=int(number or 0))
        rule = services.restore_rule_version(rule, version, request.user)
        return Response(RuleSerializer(rule).data)

    @extend_schema(responses={200: ActionTypeSerializer(many=True)}, filters=False)
    @action(detail=False, methods=["get"], url_path="action-types", pagination_class=None)
    def action_types(self, request: Request) -> Response:
        """The action types a rule can use, with their params' JSON Schema and an example."""
        return Response(rule_actions.catalogue())


class PluginViewSet(viewsets.ModelViewSet):
    """WebAssembly plugins (docs/PLUGIN_DEV.md). Upload with multipart (``module`` file plus fields)
    or JSON (``module`` in base64). The module must compile, export the ABI, import only what the
    host provides and stay under the size limit (400 saying what is wrong); the same name and version
    twice is a 409. Answers never carry the module's bytes: ``sha256`` and ``size`` instead, and
    ``module/`` downloads it."""

    queryset = Plugin.objects.select_related("created_by").defer("module")
    serializer_class = PluginSerializer
    filterset_class = PluginFilterSet
    ordering_fields = ["id", "name", "version", "stage", "created_at", "updated_at", "calls", "failures"]
    parser_classes = [MultiPartParser, FormParser, JSONParser]
    lookup_value_regex = "[0-9]+"
    action_perms = {"module": ["rules.view_plugin"]}

    def perform_create(self, serializer: PluginSerializer) -> None:
        serializer.instance = services.create_plugin(self.request.user, **serializer.validated_data)

    def perform_update(self, serializer: PluginSerializer) -> None:
        serializer.instance = services.update_plugin(
            serializer.instance, self.request.user, **serializer.validated_data
        )

    def perform_destroy(self, instance: Plugin) -> None:
        services.delete_plugin(instance, self.request.user)

    @extend_schema(responses={(200, "application/wasm"): OpenApiTypes.BINARY})
    @action(detail=True, methods=["get"])
    def module(self, request: Request, pk: str | None = None) -> HttpResponse:
        """The plugin's module, as uploaded."""
        plugin = get_object_or_404(Plugin.objects.only("id", "name", "version", "module", "sha256"), pk=pk)
        response = HttpResponse(bytes(plugin.module), content_type="application/wasm")
        filename = f"{plugin.name}-{plugin.version}.wasm".replace('"', "")
        response["Content-Disposition"] = f'attachment; filename="{filename}"'
        response["ETag"] = f'"{plugin.sha256}"'
        return response
