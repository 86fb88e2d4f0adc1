"""Admin pages of rules and plugins. Every change goes through rules.services (versions, validation,
generation bumps and events are the same as through the API); the rule page has a Test panel that
tries the form's current, unsaved fields on a sample message through the API."""

from __future__ import annotations

import copy
import json
from typing import Any

from django import forms
from django.contrib import admin, messages
from django.core.exceptions import PermissionDenied, ValidationError
from django.db.models import QuerySet
from django.forms.models import BaseInlineFormSet, construct_instance
from django.http import HttpRequest, HttpResponse, HttpResponseRedirect
from django.shortcuts import get_object_or_404
from django.template.response import TemplateResponse
from django.urls import path, reverse
from django.utils.html import format_html
from django.utils.safestring import SafeString

from fluxiot.admin import ReadOnlyTabularInline
from fluxiot.admin_actions import set_enabled
from fluxiot.errors import ConflictError
from rules import services
from rules.models import Plugin, Rule, RuleVersion

TEST_PERMISSION = "rules.test_rule"
LAST_ERROR_LIST_CHARS = 60
VERSIONS_INLINE_ROWS = 50
RULE_FORM_FIELDS = list(Rule.VERSIONED_FIELDS)
PLUGIN_FORM_FIELDS = [
    "name",
    "version",
    "description",
    "stage",
    "config",
    "scope",
    "scope_value",
    "enabled",
    "on_failure",
]
SAMPLE_MESSAGE = {"device": {"id": "sample-device", "device_type": "sensor", "tags": ["lab"]}, "telemetry": {}}


def _add_errors(form: forms.Form, exc: ValidationError, renamed: dict[str, str] | None = None) -> None:
    """Put a service's ValidationError on the form: by field where the form has it, else on top."""
    renamed = renamed or {}
    for name, problems in exc.message_dict.items():
        name = renamed.get(name, name)
        form.add_error(name if name in form.fields else None, problems)


def pretty_json(value: Any) -> SafeString:
    return format_html('<pre class="rule-json">{}</pre>', json.dumps(value, indent=2, ensure_ascii=False))


# --- Rules ---------------------------------------------------------------------------------------


class RuleAdminForm(forms.ModelForm):
    actions = forms.JSONField(
        required=False,
        widget=forms.Textarea(attrs={"rows": 8, "cols": 80, "class": "rule-code", "spellcheck": "false"}),
        help_text='An ordered list of {"type": …, "params": {…}}: emit_event, store_telemetry, send_command, '
        "publish_mqtt, webhook (see docs/RULES.md).",
    )

    class Meta:
        model = Rule
        fields = RULE_FORM_FIELDS
        widgets = {
            "condition": forms.Textarea(attrs={"rows": 3, "cols": 80, "class": "rule-code", "spellcheck": "false"}),
            "description": forms.Textarea(attrs={"rows": 2, "cols": 80}),
        }

    def clean_actions(self) -> Any:
        value = self.cleaned_data.get("actions")
        return [] if value is None else value

    def clean(self) -> dict[str, Any]:
        """The service's checks (CEL, actions, scope), so that problems show on the form."""
        cleaned = super().clean()
        if self.errors:
            return cleaned
        rule = copy.copy(self.instance)
        for name in RULE_FORM_FIELDS:
            if name in cleaned:
                setattr(rule, name, cleaned[name])
        try:
            services.validate_rule(rule)
        except ValidationError as exc:
            _add_errors(self, exc)
        return cleaned

    def _post_clean(self) -> None:
        # Only copy the values onto the instance: the model's checks ran in clean(), through the service.
        self.instance = construct_instance(self, self.instance, self._meta.fields, self._meta.exclude)


class RecentVersionsFormSet(BaseInlineFormSet):
    def get_queryset(self) -> QuerySet:
        return super().get_queryset().select_related("rule", "changed_by")[:VERSIONS_INLINE_ROWS]


class RuleVersionInline(ReadOnlyTabularInline):
    model = RuleVersion
    formset = RecentVersionsFormSet
    fields = ["version", "changed_at", "changed_by", "note", "summary", "restore_link"]
    verbose_name_plural = f"Versions (latest {VERSIONS_INLINE_ROWS}; the API lists them all)"
    ordering = ["-version"]

    @admin.display(description="condition and actions")
    def summary(self, obj: RuleVersion) -> SafeString:
        snapshot = obj.snapshot or {}
        types = ", ".join(str(a.get("type")) for a in snapshot.get("actions") or [] if isinstance(a, dict))
        state = "enabled" if snapshot.get("enabled") else "disabled"
        return format_html(
            '<code class="rule-code">{}</code><br><small>{} · {} · {}</small>',
            snapshot.get("condition", ""),
            snapshot.get("trigger", ""),
            state,
            types or "no actions",
        )

    @admin.display(description="")
    def restore_link(self, obj: RuleVersion) -> SafeString | str:
        if obj.rule.version == obj.version:
            return "current"
        url = reverse("admin:rules_rule_restore", args=[obj.rule_id, obj.version])
        return format_html('<a href="{}" class="rule-restore-link">Restore…</a>', url)


@admin.register(Rule)
class RuleAdmin(admin.ModelAdmin):
    form = RuleAdminForm
    list_display = [
        "name",
        "enabled",
        "priority",
        "trigger",
        "scope_display",
        "version",
        "evaluated",
        "matched",
        "failed",
        "last_matched_at",
        "last_error_short",
    ]
    list_display_links = ["name"]
    list_filter = ["enabled", "trigger", "scope"]
    search_fields = ["name", "description", "condition"]
    ordering = ["priority", "name"]
    list_per_page = 50
    save_on_top = True
    readonly_fields = [
        "version",
        "created_by",
        "created_at",
        "updated_at",
        "evaluated",
        "matched",
        "failed",
        "last_matched_at",
        "last_error",
        "last_error_at",
    ]
    fieldsets = [
        (None, {"fields": ["name", "description", "enabled", "priority"]}),
        ("When", {"fields": ["trigger", "scope", "scope_value", "condition"]}),
        ("Then", {"fields": ["actions"]}),
        (
            "Counters",
            {"fields": ["evaluated", "matched", "failed", "last_matched_at", "last_error", "last_error_at"]},
        ),
        ("History", {"fields": ["version", "created_by", "created_at", "updated_at"]}),
    ]
    inlines = [RuleVersionInline]
    actions = ["enable_rules", "disable_rules"]
    change_form_template = "admin/rules/rule/change_form.html"

    @admin.display(description="scope", ordering="scope")
    def scope_display(self, obj: Rule) -> str:
        label = obj.get_scope_display()
        return f"{label}: {obj.scope_value}" if obj.scope_value else label

    @admin.display(description="last error")
    def last_error_short(self, obj: Rule) -> str:
        text = obj.last_error or ""
        return text if len(text) <= LAST_ERROR_LIST_CHARS else text[: LAST_ERROR_LIST_CHARS - 1] + "…"

    def has_test_permission(self, request: HttpRequest) -> bool:
        return request.user.has_perm(TEST_PERMISSION)

    # Writes go through the services: versions, generation bumps and events as through the API.
    def save_model(self, request: HttpRequest, obj: Rule, form: forms.ModelForm, change: bool) -> None:
        if change:
            data = {name: form.cleaned_data[name] for name in form.changed_data if name in RULE_FORM_FIELDS}
            services.update_rule(obj, request.user, **data)
        else:
            data = {name: form.cleaned_data[name] for name in RULE_FORM_FIELDS if name in form.cleaned_data}
            created = services.create_rule(request.user, **data)
            obj.pk, obj.version, obj.created_by = created.pk, created.version, created.created_by
            obj.created_at, obj.updated_at = created.created_at, created.updated_at

    def delete_model(self, request: HttpRequest, obj: Rule) -> None:
        services.delete_rule(obj, request.user)

    def delete_queryset(self, request: HttpRequest, queryset: QuerySet) -> None:
        for rule in queryset:
            services.delete_rule(rule, request.user)

    def _set_enabled(self, request: HttpRequest, queryset: QuerySet, enabled: bool) -> None:
        set_enabled(
            request, queryset, enabled, "rule", lambda rule: services.update_rule(rule, request.user, enabled=enabled)
        )

    @admin.action(description="Enable selected rules", permissions=["change"])
    def enable_rules(self, request: HttpRequest, queryset: QuerySet) -> None:
        self._set_enabled(request, queryset, True)

    @admin.action(description="Disable selected rules", permissions=["change"])
    def disable_rules(self, request: HttpRequest, queryset: QuerySet) -> None:
        self._set_enabled(request, queryset, False)

    def get_urls(self) -> list[Any]:
        return [
            path(
                "<int:object_id>/versions/<int:number>/restore/",
                self.admin_site.admin_view(self.restore_view),
                name="rules_rule_restore",
            ),
            *super().get_urls(),
        ]

    def restore_view(self, request: HttpRequest, object_id: int, number: int) -> HttpResponse:
        """Restore a version: a confirmation page (GET) showing what it holds, then the restore (POST)."""
        rule = get_object_or_404(Rule, pk=object_id)
        if not self.has_change_permission(request, rule):
            raise PermissionDenied
        version = get_object_or_404(RuleVersion, rule=rule, version=number)
        change_url = reverse("admin:rules_rule_change", args=[rule.pk])
        if request.method == "POST":
            before = rule.version
            try:
                services.restore_rule_version(rule, version, request.user)
            except ValidationError as exc:
                messages.error(request, f"Version {number} cannot be restored: {'; '.join(exc.messages)}")
                return HttpResponseRedirect(change_url)
            if rule.version == before:
                messages.info(request, f"The rule already is what version {number} holds; nothing changed.")
            else:
                messages.success(request, f"Version {number} restored as version {rule.version}.")
            return HttpResponseRedirect(change_url)
        current = rule.snapshot()
        rows = [
            (name, version.snapshot.get(name), current.get(name), version.snapshot.get(name) != current.get(name))
            for name in Rule.VERSIONED_FIELDS
        ]
        context = {
            **self.admin_site.each_context(request),
            "title": f"Restore version {number} of {rule.name}",
            "opts": self.model._meta,
            "original": rule,
            "version": version,
            "rows": [(name, pretty_json(old), pretty_json(now), changed) for name, old, now, changed in rows],
            "change_url": change_url,
        }
        return TemplateResponse(request, "admin/rules/rule/restore.html", context)

    def render_change_form(
        self,
        request: HttpRequest,
        context: dict[str, Any],
        add: bool = False,
        change: bool = False,
        form_url: str = "",
        obj: Rule | None = None,
    ) -> HttpResponse:
        context["can_test"] = self.has_test_permission(request)
        context["test_url"] = reverse("rule-test-draft")
        sample = dict(SAMPLE_MESSAGE)
        if obj is not None and obj.scope == "device" and obj.scope_value:
            sample["device"] = obj.scope_value
        context["sample_message"] = json.dumps(sample, indent=2)
        return super().render_change_form(request, context, add, change, form_url, obj)


# --- Plugins ---------------------------------------------------------------------------------------


class PluginAdminForm(forms.ModelForm):
    upload = forms.FileField(
        label="Module",
        required=False,
        widget=forms.ClearableFileInput(attrs={"accept": ".wasm,application/wasm"}),
        help_text="A WebAssembly module (.wasm) of the plugin ABI (docs/PLUGIN_DEV.md). On a change, "
        "leave empty to keep the current module.",
    )

    class Meta:
        model = Plugin
        fields = PLUGIN_FORM_FIELDS
        widgets = {
            "config": forms.Textarea(attrs={"rows": 4, "cols": 80, "class": "rule-code"}),
            "description": forms.Textarea(attrs={"rows": 2, "cols": 80}),
        }

    def clean_upload(self) -> bytes | None:
        upload = self.cleaned_data.get("upload")
        if not upload:
            if self.instance.pk is None:
                raise ValidationError("Upload the plugin's module (.wasm).")
            return None
        limit = services.max_module_bytes()
        if upload.size > limit:
            raise ValidationError(f"The module is {upload.size} bytes, over the limit of {limit} bytes.")
        module = upload.read()
        try:
            return services.validate_plugin_module(module)
        except ValidationError as exc:
            raise ValidationError(exc.message_dict.get("module", exc.messages)) from exc

    def clean(self) -> dict[str, Any]:
        cleaned = super().clean()
        if self.errors:
            return cleaned
        plugin = copy.copy(self.instance)
        for name in PLUGIN_FORM_FIELDS:
            if name in cleaned:
                setattr(plugin, name, cleaned[name])
        try:
            services.validate_plugin(plugin)
        except ValidationError as exc:
            _add_errors(self, exc)
        except ConflictError as exc:
            self.add_error("version", str(exc))
        return cleaned

    def _post_clean(self) -> None:
        # Only copy the values onto the instance: the model's checks ran in clean(), through the service.
        self.instance = construct_instance(self, self.instance, self._meta.fields, self._meta.exclude)


@admin.register(Plugin)
class PluginAdmin(admin.ModelAdmin):
    form = PluginAdminForm
    list_display = ["name", "version", "stage", "enabled", "scope_display", "size", "short_sha", "calls", "failures"]
    list_filter = ["enabled", "stage", "scope", "on_failure"]
    search_fields = ["name", "description", "^sha256"]
    list_per_page = 50
    readonly_fields = [
        "sha256",
        "size",
        "module_link",
        "created_by",
        "created_at",
        "updated_at",
        "calls",
        "failures",
        "last_error",
        "last_error_at",
    ]
    fieldsets = [
        (None, {"fields": ["name", "version", "description", "stage", "enabled", "on_failure"]}),
        ("Module", {"fields": ["upload", "sha256", "size", "module_link"]}),
        ("Configuration and scope", {"fields": ["config", "scope", "scope_value"]}),
        ("Counters", {"fields": ["calls", "failures", "last_error", "last_error_at"]}),
        ("History", {"fields": ["created_by", "created_at", "updated_at"]}),
    ]

    def get_queryset(self, request: HttpRequest) -> QuerySet:
        return super().get_queryset(request).defer("module")  # never load module bytes for a page

    @admin.display(description="scope", ordering="scope")
    def scope_display(self, obj: Plugin) -> str:
        label = obj.get_scope_display()
        return f"{label}: {obj.scope_value}" if obj.scope_value else label

    @admin.display(description="sha256", ordering="sha256")
    def short_sha(self, obj: Plugin) -> SafeString:
        return format_html('<code title="{}">{}</code>', obj.sha256, obj.sha256[:12])

    @admin.display(description="download")
    def module_link(self, obj: Plugin) -> SafeString | str:
        if obj.pk is None:
            return "—"
        return format_html(
            '<a href="{}">{}-{}.wasm</a>', reverse("plugin-module", args=[obj.pk]), obj.name, obj.version
        )

    def save_model(self, request: HttpRequest, obj: Plugin, form: forms.ModelForm, change: bool) -> None:
        module = form.cleaned_data.get("upload")
        if change:
            data = {name: form.cleaned_data[name] for name in form.changed_data if name in PLUGIN_FORM_FIELDS}
            if module is not None:
                data["module"] = module
            services.update_plugin(obj, request.user, **data)
        else:
            data = {name: form.cleaned_data[name] for name in PLUGIN_FORM_FIELDS if name in form.cleaned_data}
            created = services.create_plugin(request.user, module=module, **data)
            obj.pk, obj.sha256, obj.size = created.pk, created.sha256, created.size
            obj.created_by, obj.created_at, obj.updated_at = created.created_by, created.created_at, created.updated_at

    def delete_model(self, request: HttpRequest, obj: Plugin) -> None:
        services.delete_plugin(obj, request.user)

    def delete_queryset(self, request: HttpRequest, queryset: QuerySet) -> None:
        for plugin in queryset:
            services.delete_plugin(plugin, request.user)
