"""Admin pages of scenes and their executions. Every change goes through control.scenes.services
(validation, periodic tasks, generation bumps and events as through the API); a scene's page has an
Execute now button and its latest executions; executions are read-only."""

from __future__ import annotations

import copy
import json
from typing import Any

from django import forms
from django.contrib import admin, messages
from django.core.exceptions import PermissionDenied, ValidationError
from django.db.models import QuerySet
from django.forms.models import BaseInlineFormSet, construct_instance
from django.http import HttpRequest, HttpResponse, HttpResponseNotAllowed, HttpResponseRedirect
from django.shortcuts import get_object_or_404
from django.urls import path, reverse
from django.utils.html import format_html, format_html_join
from django.utils.safestring import SafeString, mark_safe

from control.scenes import schedules, services
from control.scenes.choices import ActionOutcome
from control.scenes.models import Scene, SceneExecution
from fluxiot.admin import ReadOnlyTabularInline
from fluxiot.admin_actions import set_enabled
from fluxiot.errors import ConflictError

EXECUTE_PERMISSION = "control.execute_scene"
EXECUTIONS_INLINE_ROWS = 20
ERROR_LIST_CHARS = 80
JSON_FIELDS = ("triggers", "conditions", "then_actions", "else_if", "else_actions")
_CODE = {"class": "scene-code", "spellcheck": "false", "cols": 90}


def pretty_json(value: Any) -> SafeString:
    if value in (None, [], {}):
        return mark_safe('<span class="quiet">—</span>')
    return format_html(
        '<pre class="command-json">{}</pre>', json.dumps(value, indent=2, sort_keys=False, ensure_ascii=False)
    )


def _short(text: str, limit: int = ERROR_LIST_CHARS) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def branch_text(execution: SceneExecution) -> str:
    if execution.branch == "else_if" and execution.branch_index is not None:
        return f"else_if[{execution.branch_index}]"
    return execution.get_branch_display() if execution.branch in ("skipped", "error", "none") else execution.branch


def results_table(execution: SceneExecution) -> SafeString:
    rows = []
    for item in execution.results or []:
        detail = item.get("error") or item.get("detail") or ""
        rows.append((item.get("index", ""), item.get("type", ""), item.get("status", ""), detail))
    if not rows:
        return mark_safe('<span class="quiet">no action ran</span>')
    body = format_html_join(
        "",
        '<tr class="scene-result-{2}"><td>{0}</td><td><code>{1}</code></td><td>{2}</td><td>{3}</td></tr>',
        rows,
    )
    return format_html(
        '<table class="scene-results"><thead><tr><th>#</th><th>action</th><th>result</th><th>detail</th></tr>'
        "</thead><tbody>{}</tbody></table>",
        body,
    )


# --- Scenes ------------------------------------------------------------------------------------


class SceneAdminForm(forms.ModelForm):
    triggers = forms.JSONField(
        required=False,
        widget=forms.Textarea(attrs={**_CODE, "rows": 6}),
        help_text='[{"kind": "device_data", "device": "temp_sensor_01", "condition": '
        '"has(trigger.telemetry.temperature)"}, {"kind": "schedule", "cron": "0 7 * * 1-5"}, {"kind": "manual"}, '
        "…] — see docs/SCENES.md.",
    )
    conditions = forms.JSONField(
        required=False,
        widget=forms.Textarea(attrs={**_CODE, "rows": 3}),
        help_text='IF: CEL expressions that must all hold, e.g. ["trigger.telemetry.temperature > 30.0", '
        '"local.hour >= 8 && local.hour < 20"]. Variables: trigger, devices, local, now.',
    )
    then_actions = forms.JSONField(
        required=False,
        widget=forms.Textarea(attrs={**_CODE, "rows": 6}),
        help_text='THEN: [{"type": "send_command", "params": {"type": "set_state", "params": {"state": true}, '
        '"target": {"device": "fan_01"}}}, {"type": "delay", "params": {"seconds": 30}}, …].',
    )
    else_if = forms.JSONField(
        required=False,
        widget=forms.Textarea(attrs={**_CODE, "rows": 5}),
        help_text='ELSE IF: [{"condition": "trigger.telemetry.temperature < 25.0", "actions": [...]}], in order.',
    )
    else_actions = forms.JSONField(
        required=False, widget=forms.Textarea(attrs={**_CODE, "rows": 4}), help_text="ELSE: when nothing applied."
    )

    class Meta:
        model = Scene
        fields = list(Scene.EDITABLE)
        widgets = {"description": forms.Textarea(attrs={"rows": 2, "cols": 90})}

    def clean(self) -> dict[str, Any]:
        """The service's checks, so that problems show on the form by field."""
        cleaned = super().clean()
        for name in JSON_FIELDS:
            if name in cleaned and cleaned[name] is None:
                cleaned[name] = []
        if self.errors:
            return cleaned
        scene = copy.copy(self.instance)
        for name in Scene.EDITABLE:
            if name in cleaned:
                setattr(scene, name, cleaned[name])
        try:
            services.validate_scene(scene)
        except ValidationError as exc:
            for name, problems in exc.message_dict.items():
                self.add_error(name if name in self.fields else None, problems)
        return cleaned

    def _post_clean(self) -> None:
        # Only copy the values onto the instance: the checks ran in clean(), through the service.
        self.instance = construct_instance(self, self.instance, self._meta.fields, self._meta.exclude)


class RecentExecutionsFormSet(BaseInlineFormSet):
    def get_queryset(self) -> QuerySet:
        return super().get_queryset().select_related("scene")[:EXECUTIONS_INLINE_ROWS]


class SceneExecutionInline(ReadOnlyTabularInline):
    model = SceneExecution
    formset = RecentExecutionsFormSet
    fields = ["execution_link", "kind_display", "branch_display", "status", "actions_display", "error_display"]
    verbose_name_plural = f"Executions (latest {EXECUTIONS_INLINE_ROWS})"
    ordering = ["-started_at", "-id"]

    @admin.display(description="started")
    def execution_link(self, obj: SceneExecution) -> SafeString:
        url = reverse("admin:control_sceneexecution_change", args=[obj.pk])
        return format_html('<a href="{}">{}</a>', url, obj.started_at.strftime("%Y-%m-%d %H:%M:%S"))

    @admin.display(description="trigger")
    def kind_display(self, obj: SceneExecution) -> str:
        device = (obj.trigger or {}).get("device")
        return f"{obj.kind} ({device})" if device else obj.kind

    @admin.display(description="branch")
    def branch_display(self, obj: SceneExecution) -> str:
        return branch_text(obj)

    @admin.display(description="actions")
    def actions_display(self, obj: SceneExecution) -> str:
        results = obj.results or []
        ok = sum(1 for item in results if item.get("status") == ActionOutcome.OK)
        return f"{ok} ok, {obj.failed_actions} failed" if results else "—"

    @admin.display(description="error")
    def error_display(self, obj: SceneExecution) -> str:
        return _short(obj.error) if obj.error else ""


@admin.register(Scene)
class SceneAdmin(admin.ModelAdmin):
    form = SceneAdminForm
    list_display = ["name", "enabled", "triggers_display", "time_zone", "cooldown", "last_run_at"]
    list_filter = ["enabled"]
    search_fields = ["name", "description"]
    list_per_page = 50
    save_on_top = True
    readonly_fields = ["schedules_display", "last_run_at", "created_by", "created_at", "updated_at"]
    fieldsets = [
        (None, {"fields": ["name", "description", "enabled"]}),
        ("When (triggers)", {"fields": ["triggers", "time_zone", "schedules_display", "cooldown"]}),
        ("If (conditions)", {"fields": ["conditions"]}),
        ("Then / else if / else", {"fields": ["then_actions", "else_if", "else_actions"]}),
        ("History", {"fields": ["last_run_at", "created_by", "created_at", "updated_at"]}),
    ]
    inlines = [SceneExecutionInline]
    actions = ["execute_scenes", "enable_scenes", "disable_scenes"]
    change_form_template = "admin/control/scene/change_form.html"

    class Media:
        css = {"all": ["control/admin.css"]}

    @admin.display(description="triggers")
    def triggers_display(self, obj: Scene) -> str:
        kinds = [str(t.get("kind")) for t in obj.triggers or [] if isinstance(t, dict)]
        return ", ".join(kinds) or "—"

    @admin.display(description="schedules")
    def schedules_display(self, obj: Scene) -> SafeString | str:
        if obj.pk is None:
            return "—"
        shown = schedules.schedules_of(obj)
        if not shown:
            return "—"
        return format_html_join(
            mark_safe("<br>"),
            "<code>{}</code>: {} — periodic task <code>{}</code>{}",
            [
                (item["cron"], item["description"], item["task"] or "missing", "" if item["enabled"] else " (disabled)")
                for item in shown
            ],
        )

    def has_execute_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return request.user.has_perm(EXECUTE_PERMISSION)

    # Writes go through the services.
    def save_model(self, request: HttpRequest, obj: Scene, form: forms.ModelForm, change: bool) -> None:
        data = {name: form.cleaned_data[name] for name in Scene.EDITABLE if name in form.cleaned_data}
        if change:
            services.update_scene(obj, request.user, **data)
        else:
            created = services.create_scene(request.user, **data)
            obj.pk, obj.created_by = created.pk, created.created_by
            obj.created_at, obj.updated_at = created.created_at, created.updated_at

    def delete_model(self, request: HttpRequest, obj: Scene) -> None:
        services.delete_scene(obj, request.user)

    def delete_queryset(self, request: HttpRequest, queryset: QuerySet) -> None:
        for scene in queryset:
            try:
                services.delete_scene(scene, request.user)
            except ConflictError as exc:
                messages.error(request, str(exc))

    def delete_view(self, request: HttpRequest, object_id: str, extra_context: dict[str, Any] | None = None) -> Any:
        """Refuse up front (with the reason) to delete a scene other scenes run."""
        scene = Scene.objects.filter(pk=object_id).first() if str(object_id).isdigit() else None
        if scene is not None and request.method == "POST":
            users = services.users_of(scene)
            if users:
                names = ", ".join(f"{name} ({pk})" for pk, name in users)
                messages.error(request, f"{scene.name} is run by other scenes ({names}); remove those actions first.")
                return HttpResponseRedirect(reverse("admin:control_scene_change", args=[scene.pk]))
        return super().delete_view(request, object_id, extra_context)

    def _run(self, request: HttpRequest, scene: Scene) -> None:
        try:
            execution = services.execute_scene(scene, request.user)
        except ConflictError as exc:
            messages.error(request, str(exc))
            return
        url = reverse("admin:control_sceneexecution_change", args=[execution.pk])
        summary = f"{scene.name}: branch {branch_text(execution)}, {len(execution.results or [])} actions run"
        if execution.failed_actions:
            summary += f", {execution.failed_actions} failed"
        if execution.error:
            summary += f" ({execution.error})"
        level = messages.WARNING if execution.failed_actions or execution.branch == "error" else messages.SUCCESS
        messages.add_message(
            request, level, format_html('{} — <a href="{}">execution {}</a>', summary, url, execution.pk)
        )

    @admin.action(description="Execute selected scenes now", permissions=["execute"])
    def execute_scenes(self, request: HttpRequest, queryset: QuerySet) -> None:
        for scene in queryset:
            self._run(request, scene)

    def _set_enabled(self, request: HttpRequest, queryset: QuerySet, enabled: bool) -> None:
        set_enabled(
            request, queryset, enabled, "scene", lambda scene: services.set_enabled(scene, enabled, request.user)
        )

    @admin.action(description="Enable selected scenes", permissions=["change"])
    def enable_scenes(self, request: HttpRequest, queryset: QuerySet) -> None:
        self._set_enabled(request, queryset, True)

    @admin.action(description="Disable selected scenes", permissions=["change"])
    def disable_scenes(self, request: HttpRequest, queryset: QuerySet) -> None:
        self._set_enabled(request, queryset, False)

    def get_urls(self) -> list[Any]:
        return [
            path(
                "<int:object_id>/execute/",
                self.admin_site.admin_view(self.execute_view),
                name="control_scene_execute",
            ),
            *super().get_urls(),
        ]

    def execute_view(self, request: HttpRequest, object_id: int) -> HttpResponse:
        """The Execute now button of a scene's page (POST)."""
        if request.method != "POST":
            return HttpResponseNotAllowed(["POST"])
        if not self.has_execute_permission(request):
            raise PermissionDenied
        scene = get_object_or_404(Scene, pk=object_id)
        self._run(request, scene)
        return HttpResponseRedirect(reverse("admin:control_scene_change", args=[scene.pk]))

    def render_change_form(
        self,
        request: HttpRequest,
        context: dict[str, Any],
        add: bool = False,
        change: bool = False,
        form_url: str = "",
        obj: Scene | None = None,
    ) -> HttpResponse:
        context["can_execute"] = self.has_execute_permission(request)
        return super().render_change_form(request, context, add, change, form_url, obj)


# --- Executions --------------------------------------------------------------------------------


@admin.register(SceneExecution)
class SceneExecutionAdmin(admin.ModelAdmin):
    list_display = [
        "started_at",
        "scene_link",
        "kind_display",
        "branch_display",
        "status",
        "failed_actions",
        "error_short",
    ]
    list_filter = ["branch", "status", "started_at", "scene"]
    search_fields = ["scene__name", "error"]
    date_hierarchy = "started_at"
    list_select_related = ["scene"]
    list_per_page = 50
    show_full_result_count = False
    fieldsets = [
        (None, {"fields": ["scene_link", "kind_display", "branch_display", "status", "triggered_by", "error"]}),
        ("Trigger", {"fields": ["trigger_display"]}),
        ("Actions", {"fields": ["results_display", "actions_display"]}),
        ("Timing", {"fields": ["started_at", "finished_at", "resume_at"]}),
    ]
    readonly_fields = [
        "scene_link",
        "kind_display",
        "branch_display",
        "status",
        "triggered_by",
        "error",
        "trigger_display",
        "results_display",
        "actions_display",
        "started_at",
        "finished_at",
        "resume_at",
    ]
    change_form_template = "admin/control/scene/execution_change_form.html"

    class Media:
        css = {"all": ["control/admin.css"]}

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    @admin.display(description="scene", ordering="scene__name")
    def scene_link(self, obj: SceneExecution) -> SafeString:
        url = reverse("admin:control_scene_change", args=[obj.scene_id])
        return format_html('<a href="{}">{}</a>', url, obj.scene.name)

    @admin.display(description="trigger")
    def kind_display(self, obj: SceneExecution) -> str:
        device = (obj.trigger or {}).get("device")
        return f"{obj.kind} ({device})" if device else obj.kind

    @admin.display(description="branch", ordering="branch")
    def branch_display(self, obj: SceneExecution) -> str:
        return branch_text(obj)

    @admin.display(description="error")
    def error_short(self, obj: SceneExecution) -> str:
        return _short(obj.error) if obj.error else ""

    @admin.display(description="trigger")
    def trigger_display(self, obj: SceneExecution) -> SafeString:
        return pretty_json(obj.trigger)

    @admin.display(description="results")
    def results_display(self, obj: SceneExecution) -> SafeString:
        return results_table(obj)

    @admin.display(description="the branch's actions")
    def actions_display(self, obj: SceneExecution) -> SafeString:
        return pretty_json(obj.actions)
