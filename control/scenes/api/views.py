from __future__ import annotations

from typing import Any

from drf_spectacular.utils import extend_schema
from rest_framework import status, viewsets
from rest_framework.decorators import action
from rest_framework.request import Request
from rest_framework.response import Response

from control.scenes import actions as scene_actions
from control.scenes import services
from control.scenes.api.serializers import SceneActionTypeSerializer, SceneExecutionSerializer, SceneSerializer
from control.scenes.filters import SceneExecutionFilterSet, SceneFilterSet
from control.scenes.models import Scene, SceneExecution

VIEW_EXECUTIONS = ["control.view_scene", "control.view_sceneexecution"]


class SceneViewSet(viewsets.ModelViewSet):
    """Scenes: triggers, conditions and IF / ELSE-IF / ELSE actions (docs/SCENES.md). A scene's
    schedules own periodic tasks kept in step on every save. ``execute/`` runs it now, by hand;
    ``executions/`` is its log, newest first. Deleting a scene other scenes run is a 409."""

    queryset = Scene.objects.select_related("created_by")
    serializer_class = SceneSerializer
    filterset_class = SceneFilterSet
    ordering_fields = ["id", "name", "enabled", "created_at", "updated_at", "last_run_at"]
    lookup_value_regex = "[0-9]+"
    action_perms = {
        "execute": ["control.view_scene", "control.execute_scene"],
        "executions": VIEW_EXECUTIONS,
        "action_types": ["control.view_scene"],
    }

    def perform_create(self, serializer: SceneSerializer) -> None:
        serializer.instance = services.create_scene(self.request.user, **serializer.validated_data)

    def perform_update(self, serializer: SceneSerializer) -> None:
        serializer.instance = services.update_scene(serializer.instance, self.request.user, **serializer.validated_data)

    def perform_destroy(self, instance: Scene) -> None:
        services.delete_scene(instance, self.request.user)

    def filter_queryset(self, queryset: Any) -> Any:
        if self.action in ("executions", "action_types", "execute"):
            return queryset
        return super().filter_queryset(queryset)

    @extend_schema(request=None, responses={201: SceneExecutionSerializer})
    @action(detail=True, methods=["post"])
    def execute(self, request: Request, pk: str | None = None) -> Response:
        """Run the scene now, by hand: its conditions choose the branch, the cooldown does not apply
        (409 for a disabled scene). Answers with the execution (``waiting`` when a delay holds the
        rest)."""
        execution = services.execute_scene(self.get_object(), request.user)
        return Response(SceneExecutionSerializer(execution).data, status=status.HTTP_201_CREATED)

    @extend_schema(responses={200: SceneExecutionSerializer(many=True)}, filters=False)
    @action(detail=True, methods=["get"])
    def executions(self, request: Request, pk: str | None = None) -> Response:
        """The scene's executions, newest first (filters as ``scene-executions/``)."""
        scene = self.get_object()
        queryset = scene.executions.select_related("scene", "triggered_by")
        queryset = SceneExecutionFilterSet(request.query_params, queryset=queryset, request=request).qs
        page = self.paginate_queryset(queryset)
        return self.get_paginated_response(SceneExecutionSerializer(page, many=True).data)

    @extend_schema(responses={200: SceneActionTypeSerializer(many=True)}, filters=False)
    @action(detail=False, methods=["get"], url_path="action-types", pagination_class=None)
    def action_types(self, request: Request) -> Response:
        """The action types a scene can use (the rules' registry and ``delay``), with their params'
        JSON Schema and an example."""
        return Response(scene_actions.catalogue())


class SceneExecutionViewSet(viewsets.ReadOnlyModelViewSet):
    """Every scene execution, newest first: trigger, branch, each action's result. Filter by scene,
    branch, status, trigger kind, failed actions, time."""

    queryset = SceneExecution.objects.select_related("scene", "triggered_by")
    serializer_class = SceneExecutionSerializer
    filterset_class = SceneExecutionFilterSet
    ordering_fields = ["started_at", "finished_at", "failed_actions"]
