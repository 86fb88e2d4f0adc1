"""Admin pages of alarms (read-only rows; acknowledge and clear through the services, as actions and
as buttons on an alarm's page), notification channels (the secret is never shown), notification
rules, and the delivery log (read-only; dead deliveries can be sent again)."""

from __future__ import annotations

import json
from typing import Any

from django import forms
from django.contrib import admin, messages
from django.core.exceptions import PermissionDenied, ValidationError
from django.db.models import QuerySet
from django.http import HttpRequest, HttpResponse, HttpResponseNotAllowed, HttpResponseRedirect
from django.shortcuts import get_object_or_404
from django.urls import path, reverse
from django.utils.html import format_html
from django.utils.safestring import SafeString, mark_safe

from alarms import notifications, services
from alarms.choices import AlarmSeverity, AlarmStatus, DeliveryStatus, NotifyOn
from alarms.filters import subtree_ids
from alarms.models import Alarm, NotificationChannel, NotificationDelivery, NotificationRule
from devices.models import DeviceGroup
from fluxiot.errors import ConflictError

ACK_PERMISSION = "alarms.acknowledge_alarm"
CLEAR_PERMISSION = "alarms.change_alarm"
RETRY_PERMISSION = "alarms.change_notificationdelivery"
ERROR_LIST_CHARS = 80


def badge(kind: str, value: str, label: str) -> SafeString:
    """A coloured badge (styles in alarms/static/alarms/admin.css)."""
    return format_html('<span class="alarm-badge alarm-{}-{}">{}</span>', kind, value, label)


def severity_badge(severity: str) -> SafeString:
    label = AlarmSeverity(severity).label if severity in AlarmSeverity.values else severity
    return badge("severity", severity, label)


def status_badge(status: str) -> SafeString:
    label = AlarmStatus(status).label if status in AlarmStatus.values else status
    return badge("status", status, label)


def pretty_json(value: Any) -> SafeString:
    if value in (None, {}, []):
        return mark_safe('<span class="quiet">—</span>')
    return format_html(
        '<pre class="alarm-json">{}</pre>', json.dumps(value, indent=2, sort_keys=True, ensure_ascii=False, default=str)
    )


class ActiveFilter(admin.SimpleListFilter):
    title = "active"
    parameter_name = "active"

    def lookups(self, request: HttpRequest, model_admin: admin.ModelAdmin) -> list[tuple[str, str]]:
        return [("yes", "Active"), ("no", "Cleared")]

    def queryset(self, request: HttpRequest, queryset: QuerySet) -> QuerySet:
        active = [AlarmStatus.ACTIVE_UNACKNOWLEDGED, AlarmStatus.ACTIVE_ACKNOWLEDGED]
        if self.value() == "yes":
            return queryset.filter(status__in=active)
        if self.value() == "no":
            return queryset.exclude(status__in=active)
        return queryset


class GroupFilter(admin.SimpleListFilter):
    """A device group, with the groups below it."""

    title = "device group (and below)"
    parameter_name = "group"

    def lookups(self, request: HttpRequest, model_admin: admin.ModelAdmin) -> list[tuple[str, str]]:
        return [
            (str(pk), "\u2003" * max(group_path.count("/") - 2, 0) + name)
            for pk, name, group_path in DeviceGroup.objects.order_by("path").values_list("pk", "name", "path")[:500]
        ]

    def queryset(self, request: HttpRequest, queryset: QuerySet) -> QuerySet:
        if not self.value():
            return queryset
        group = DeviceGroup.objects.filter(pk=self.value()).first() if self.value().isdigit() else None
        return queryset.filter(device__group__in=subtree_ids(group)) if group else queryset.none()


class TypeFilter(admin.SimpleListFilter):
    title = "type"
    parameter_name = "type"

    def lookups(self, request: HttpRequest, model_admin: admin.ModelAdmin) -> list[tuple[str, str]]:
        types = Alarm.objects.order_by("type").values_list("type", flat=True).distinct()[:100]
        return [(t, t) for t in types]

    def queryset(self, request: HttpRequest, queryset: QuerySet) -> QuerySet:
        return queryset.filter(type=self.value()) if self.value() else queryset


@admin.register(Alarm)
class AlarmAdmin(admin.ModelAdmin):
    list_display = [
        "id",
        "device_link",
        "type",
        "severity_display",
        "status_display",
        "count",
        "started_at",
        "last_raised_at",
        "ended_at",
    ]
    list_display_links = ["id", "type"]
    list_filter = ["severity", "status", ActiveFilter, TypeFilter, GroupFilter, "started_at"]
    search_fields = ["^device__id", "device__name", "type"]
    search_help_text = "Device id (or its start), device name, or alarm type."
    date_hierarchy = "started_at"
    list_select_related = ["device"]
    list_per_page = 50
    show_full_result_count = False
    fieldsets = [
        (None, {"fields": ["device_link", "type", "severity_display", "status_display", "count", "source"]}),
        ("Details", {"fields": ["details_display"]}),
        (
            "History",
            {
                "fields": [
                    "started_at",
                    "last_raised_at",
                    "raised_by",
                    "acknowledged_at",
                    "acknowledged_by",
                    "ended_at",
                    "cleared_by",
                    "clear_reason",
                ]
            },
        ),
    ]
    readonly_fields = [
        "device_link",
        "type",
        "severity_display",
        "status_display",
        "count",
        "source",
        "details_display",
        "started_at",
        "last_raised_at",
        "raised_by",
        "acknowledged_at",
        "acknowledged_by",
        "ended_at",
        "cleared_by",
        "clear_reason",
    ]
    actions = ["acknowledge_alarms", "clear_alarms"]
    change_form_template = "admin/alarms/alarm/change_form.html"

    class Media:
        css = {"all": ["alarms/admin.css"]}

    # Alarms change only through the services: no adding or editing here, only acting.
    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_acknowledge_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return request.user.has_perm(ACK_PERMISSION)

    def has_clear_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return request.user.has_perm(CLEAR_PERMISSION)

    def lookup_allowed(self, lookup: str, value: str, request: HttpRequest | None = None) -> bool:
        # A device's alarms, linked from elsewhere (``?device__id__exact=<id>``).
        return lookup == "device__id__exact" or super().lookup_allowed(lookup, value, request)

    @admin.display(description="device", ordering="device_id")
    def device_link(self, obj: Alarm) -> SafeString:
        url = reverse("admin:devices_device_change", args=[obj.device_id])
        return format_html('<a href="{}">{}</a>', url, obj.device_id)

    @admin.display(description="severity", ordering="severity")
    def severity_display(self, obj: Alarm) -> SafeString:
        return severity_badge(obj.severity)

    @admin.display(description="status", ordering="status")
    def status_display(self, obj: Alarm) -> SafeString:
        return status_badge(obj.status)

    @admin.display(description="details")
    def details_display(self, obj: Alarm) -> SafeString:
        return pretty_json(obj.details)

    def _act(self, request: HttpRequest, pks: list[int], verb: str) -> None:
        done = skipped = 0
        for pk in pks:
            try:
                if verb == "acknowledged":
                    services.acknowledge(pk, actor=request.user)
                else:
                    services.clear(pk, actor=request.user, reason=f"Cleared by {request.user.get_username()}.")
            except ConflictError:
                skipped += 1
            except Alarm.DoesNotExist:  # deleted meanwhile (with its device)
                continue
            else:
                done += 1
        if done:
            messages.success(request, f"{done} alarm{'s' if done != 1 else ''} {verb}.")
        if skipped:
            were = "were" if skipped != 1 else "was"
            messages.warning(request, f"{skipped} alarm{'s' if skipped != 1 else ''} {were} already {verb}.")

    @admin.action(description="Acknowledge selected alarms", permissions=["acknowledge"])
    def acknowledge_alarms(self, request: HttpRequest, queryset: QuerySet) -> None:
        self._act(request, list(queryset.order_by("pk").values_list("pk", flat=True)), "acknowledged")

    @admin.action(description="Clear selected alarms", permissions=["clear"])
    def clear_alarms(self, request: HttpRequest, queryset: QuerySet) -> None:
        self._act(request, list(queryset.order_by("pk").values_list("pk", flat=True)), "cleared")

    def get_urls(self) -> list[Any]:
        return [
            path("<int:object_id>/ack/", self.admin_site.admin_view(self.ack_view), name="alarms_alarm_ack"),
            path("<int:object_id>/clear/", self.admin_site.admin_view(self.clear_view), name="alarms_alarm_clear"),
            *super().get_urls(),
        ]

    def _button(self, request: HttpRequest, object_id: int, allowed: bool, verb: str) -> HttpResponse:
        if request.method != "POST":
            return HttpResponseNotAllowed(["POST"])
        if not allowed:
            raise PermissionDenied
        alarm = get_object_or_404(Alarm, pk=object_id)
        self._act(request, [alarm.pk], verb)
        return HttpResponseRedirect(reverse("admin:alarms_alarm_change", args=[alarm.pk]))

    def ack_view(self, request: HttpRequest, object_id: int) -> HttpResponse:
        """The Acknowledge button of an alarm's page (POST)."""
        return self._button(request, object_id, self.has_acknowledge_permission(request), "acknowledged")

    def clear_view(self, request: HttpRequest, object_id: int) -> HttpResponse:
        """The Clear button of an alarm's page (POST)."""
        return self._button(request, object_id, self.has_clear_permission(request), "cleared")

    def change_view(
        self, request: HttpRequest, object_id: str, form_url: str = "", extra_context: dict[str, Any] | None = None
    ) -> HttpResponse:
        context = dict(extra_context or {})
        context["can_acknowledge"] = self.has_acknowledge_permission(request)
        context["can_clear"] = self.has_clear_permission(request)
        return super().change_view(request, object_id, form_url, extra_context=context)


class ChannelAdminForm(forms.ModelForm):
    secret = forms.CharField(
        required=False,
        widget=forms.PasswordInput(render_value=False),
        help_text="Webhook: the HMAC-SHA256 key (at least 16 characters). Never shown; leave empty to keep it.",
    )
    email_addresses = forms.CharField(
        required=False,
        widget=forms.Textarea(attrs={"rows": 3, "cols": 60}),
        help_text="Email: one address per line (or separated by commas).",
    )

    class Meta:
        model = NotificationChannel
        fields = [
            "name",
            "kind",
            "enabled",
            "email_addresses",
            "users",
            "groups",
            "url",
            "secret",
            "timeout",
            "max_attempts",
        ]

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if self.instance.pk:
            self.initial["email_addresses"] = "\n".join(self.instance.email_addresses or [])
        self.initial.pop("secret", None)

    def clean_email_addresses(self) -> list[str]:
        text = self.cleaned_data.get("email_addresses") or ""
        return [part.strip() for part in text.replace(",", "\n").splitlines() if part.strip()]

    def clean_secret(self) -> str:
        secret = self.cleaned_data.get("secret") or ""
        return secret or (self.instance.secret if self.instance.pk else "")

    def clean(self) -> dict[str, Any]:
        data = super().clean()
        if (
            data.get("kind") == "email"
            and not data.get("email_addresses")
            and not data.get("users")
            and not data.get("groups")
        ):
            self.add_error("email_addresses", "An email channel needs at least one address, user or user group.")
        return data


@admin.register(NotificationChannel)
class NotificationChannelAdmin(admin.ModelAdmin):
    form = ChannelAdminForm
    list_display = ["name", "kind", "enabled", "target_display", "max_attempts", "updated_at"]
    list_filter = ["kind", "enabled"]
    search_fields = ["name", "url"]
    filter_horizontal = ["users", "groups"]
    fieldsets = [
        (None, {"fields": ["name", "kind", "enabled", "max_attempts"]}),
        ("Email", {"fields": ["email_addresses", "users", "groups"]}),
        ("Webhook", {"fields": ["url", "secret", "timeout"]}),
    ]

    @admin.display(description="sends to")
    def target_display(self, obj: NotificationChannel) -> str:
        return obj.target

    def save_model(self, request: HttpRequest, obj: NotificationChannel, form: forms.ModelForm, change: bool) -> None:
        notifications.save_channel(
            obj, actor=request.user, users=form.cleaned_data.get("users"), groups=form.cleaned_data.get("groups")
        )


class RuleAdminForm(forms.ModelForm):
    transitions = forms.MultipleChoiceField(
        choices=NotifyOn.choices, widget=forms.CheckboxSelectMultiple, help_text="Which transitions are sent."
    )
    alarm_types = forms.CharField(
        required=False, help_text="Alarm types, separated by commas (empty: every type).", max_length=4000
    )

    class Meta:
        model = NotificationRule
        fields = ["name", "enabled", "alarm_types", "min_severity", "group", "transitions", "channels"]

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if self.instance.pk:
            self.initial["alarm_types"] = ", ".join(self.instance.alarm_types or [])
        elif "transitions" not in self.initial:
            self.initial["transitions"] = [NotifyOn.RAISED, NotifyOn.ESCALATED]

    def clean_alarm_types(self) -> list[str]:
        text = self.cleaned_data.get("alarm_types") or ""
        return [part.strip() for part in text.split(",") if part.strip()]


@admin.register(NotificationRule)
class NotificationRuleAdmin(admin.ModelAdmin):
    form = RuleAdminForm
    list_display = ["name", "enabled", "types_display", "min_severity", "group", "transitions_display"]
    list_filter = ["enabled", "min_severity"]
    search_fields = ["name"]
    filter_horizontal = ["channels"]
    list_select_related = ["group"]

    @admin.display(description="alarm types")
    def types_display(self, obj: NotificationRule) -> str:
        return ", ".join(obj.alarm_types) or "all"

    @admin.display(description="transitions")
    def transitions_display(self, obj: NotificationRule) -> str:
        return ", ".join(obj.transitions)

    def save_model(self, request: HttpRequest, obj: NotificationRule, form: forms.ModelForm, change: bool) -> None:
        notifications.save_rule(obj, actor=request.user, channels=form.cleaned_data.get("channels"))


@admin.register(NotificationDelivery)
class NotificationDeliveryAdmin(admin.ModelAdmin):
    list_display = [
        "id",
        "created_at",
        "channel",
        "kind",
        "reason",
        "alarm_link",
        "status_display",
        "attempts",
        "response_code",
        "error_short",
    ]
    list_filter = ["status", "kind", "reason", "channel", "created_at"]
    search_fields = ["target", "last_error"]
    date_hierarchy = "created_at"
    list_select_related = ["channel"]
    list_per_page = 100
    show_full_result_count = False
    fields = [
        "channel",
        "kind",
        "target",
        "alarm_link",
        "reason",
        "status_display",
        "attempts",
        "response_code",
        "last_error",
        "created_at",
        "next_attempt_at",
        "sent_at",
        "payload_display",
    ]
    readonly_fields = fields
    actions = ["retry_deliveries"]

    class Media:
        css = {"all": ["alarms/admin.css"]}

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_retry_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return request.user.has_perm(RETRY_PERMISSION)

    @admin.display(description="alarm", ordering="alarm_id")
    def alarm_link(self, obj: NotificationDelivery) -> SafeString | str:
        if obj.alarm_id is None:
            return "—"
        url = reverse("admin:alarms_alarm_change", args=[obj.alarm_id])
        return format_html('<a href="{}">#{}</a>', url, obj.alarm_id)

    @admin.display(description="status", ordering="status")
    def status_display(self, obj: NotificationDelivery) -> SafeString:
        label = DeliveryStatus(obj.status).label if obj.status in DeliveryStatus.values else obj.status
        return badge("delivery", obj.status, label)

    @admin.display(description="last error")
    def error_short(self, obj: NotificationDelivery) -> str:
        text = obj.last_error or ""
        return text if len(text) <= ERROR_LIST_CHARS else text[: ERROR_LIST_CHARS - 1] + "…"

    @admin.display(description="payload")
    def payload_display(self, obj: NotificationDelivery) -> SafeString:
        return pretty_json(obj.payload)

    @admin.action(description="Send selected dead deliveries again", permissions=["retry"])
    def retry_deliveries(self, request: HttpRequest, queryset: QuerySet) -> None:
        sent = skipped = 0
        for pk in queryset.order_by("pk").values_list("pk", flat=True):
            try:
                notifications.retry_delivery(pk)
            except ConflictError:
                skipped += 1
            except (NotificationDelivery.DoesNotExist, ValidationError):
                continue
            else:
                sent += 1
        if sent:
            messages.success(request, f"{sent} deliver{'ies' if sent != 1 else 'y'} queued again.")
        if skipped:
            messages.warning(request, f"{skipped} not dead, left as they were.")
