"""Admin pages of the registry: the operator's main tool for devices and groups."""

from __future__ import annotations

from typing import Any

from django import forms
from django.conf import settings
from django.contrib import admin, messages
from django.core.exceptions import ValidationError
from django.db.models import Count, QuerySet
from django.forms.models import BaseInlineFormSet
from django.http import HttpRequest, HttpResponse, HttpResponseRedirect
from django.template.response import TemplateResponse
from django.urls import path, reverse
from django.utils.html import format_html

from devices import importers, services
from devices.models import Device, DeviceCredential, DeviceGroup, DeviceStatusChange
from fluxiot.admin import ReadOnlyTabularInline
from fluxiot.errors import ConflictError

STATUS_HISTORY_INLINE_ROWS = 20


class TagListField(forms.CharField):
    """Tags edited as one comma-separated line."""

    def prepare_value(self, value: Any) -> Any:
        if isinstance(value, list):
            return ", ".join(value)
        return value

    def to_python(self, value: Any) -> list[str]:
        text = super().to_python(value) or ""
        return [tag.strip() for tag in text.replace(";", ",").split(",") if tag.strip()]


class DeviceAdminForm(forms.ModelForm):
    tags = TagListField(required=False, help_text="Comma-separated, e.g. lab, floor-2")

    class Meta:
        model = Device
        fields = [
            "id",
            "name",
            "device_type",
            "custom_type",
            "protocol",
            "group",
            "tags",
            "metadata",
            "cert_fingerprint",
        ]


class RecentStatusFormSet(BaseInlineFormSet):
    def get_queryset(self) -> QuerySet:
        return super().get_queryset()[:STATUS_HISTORY_INLINE_ROWS]


class StatusHistoryInline(ReadOnlyTabularInline):
    model = DeviceStatusChange
    formset = RecentStatusFormSet
    fields = ["changed_at", "old_status", "new_status", "reason", "changed_by"]
    verbose_name_plural = f"Status history (latest {STATUS_HISTORY_INLINE_ROWS})"


class MoveToGroupForm(forms.Form):
    group = forms.ModelChoiceField(queryset=DeviceGroup.objects.all(), required=False, empty_label="(no group)")


class ImportForm(forms.Form):
    file = forms.FileField(help_text="CSV with a header row, or JSON (a list of devices).")


@admin.register(Device)
class DeviceAdmin(admin.ModelAdmin):
    form = DeviceAdminForm
    list_display = [
        "id",
        "name",
        "type_display",
        "protocol",
        "status",
        "activation_state",
        "group",
        "tag_list",
        "last_seen_at",
    ]
    list_filter = ["status", "activation_state", "device_type", "protocol", ("group", admin.RelatedOnlyFieldListFilter)]
    search_fields = ["id", "name", "tags"]
    list_select_related = ["group"]
    list_per_page = 50
    readonly_fields = [
        "status",
        "activation_state",
        "activated_at",
        "last_seen_at",
        "created_at",
        "updated_at",
        "has_secret",
        "attributes",
    ]
    fieldsets = [
        (None, {"fields": ["id", "name", "device_type", "custom_type", "protocol", "group", "tags"]}),
        ("State", {"fields": ["status", "activation_state", "activated_at", "has_secret", "last_seen_at"]}),
        (
            "Details",
            {"fields": ["metadata", "attributes", "heartbeat_timeout", "cert_fingerprint", "created_at", "updated_at"]},
        ),
    ]
    inlines = [StatusHistoryInline]
    actions = ["activate_devices", "disable_devices", "rotate_device_credentials", "move_to_group"]
    change_list_template = "admin/devices/device/change_list.html"

    def get_readonly_fields(self, request: HttpRequest, obj: Device | None = None) -> list[str]:
        fields = list(super().get_readonly_fields(request, obj))
        return [*fields, "id"] if obj is not None else fields

    @admin.display(description="type", ordering="device_type")
    def type_display(self, obj: Device) -> str:
        return obj.type_label

    @admin.display(description="tags")
    def tag_list(self, obj: Device) -> str:
        return ", ".join(obj.tags)

    @admin.display(description="secret issued", boolean=True)
    def has_secret(self, obj: Device) -> bool:
        return DeviceCredential.objects.filter(device=obj).exists()

    def has_activate_permission(self, request: HttpRequest) -> bool:
        return request.user.has_perm("devices.activate_device")

    # Writes go through the services so that events and history are the same as through the API.
    def save_model(self, request: HttpRequest, obj: Device, form: forms.ModelForm, change: bool) -> None:
        data = {name: form.cleaned_data[name] for name in form.changed_data if name in form.cleaned_data}
        if change:
            services.update_device(obj, actor=request.user, **data)
        else:
            obj.pk = services.create_device(actor=request.user, **form.cleaned_data).pk

    def delete_model(self, request: HttpRequest, obj: Device) -> None:
        services.delete_device(obj, actor=request.user)

    def delete_queryset(self, request: HttpRequest, queryset: QuerySet) -> None:
        for device in queryset:
            services.delete_device(device, actor=request.user)

    def _secrets_page(self, request: HttpRequest, title: str, issued: list[tuple[str, str]]) -> TemplateResponse:
        context = {**self.admin_site.each_context(request), "title": title, "issued": issued, "opts": self.model._meta}
        return TemplateResponse(request, "admin/devices/device/secrets.html", context)

    @admin.action(description="Activate selected devices (issue secrets)", permissions=["activate"])
    def activate_devices(self, request: HttpRequest, queryset: QuerySet) -> TemplateResponse | None:
        issued, skipped = [], []
        for device in queryset:
            try:
                issued.append((device.id, services.activate_device(device, actor=request.user)))
            except ConflictError:
                skipped.append(device.id)
        if skipped:
            messages.warning(request, f"Already active, left as they were: {', '.join(skipped)}.")
        return self._secrets_page(request, "Device secrets", issued) if issued else None

    @admin.action(description="Disable selected devices", permissions=["activate"])
    def disable_devices(self, request: HttpRequest, queryset: QuerySet) -> None:
        disabled = sum(services.disable_device(device, actor=request.user) for device in queryset)
        messages.success(request, f"{disabled} devices disabled.")

    @admin.action(description="Rotate credentials of selected devices", permissions=["activate"])
    def rotate_device_credentials(self, request: HttpRequest, queryset: QuerySet) -> TemplateResponse | None:
        issued, skipped = [], []
        for device in queryset:
            try:
                issued.append((device.id, services.rotate_credentials(device, actor=request.user)))
            except ConflictError:
                skipped.append(device.id)
        if skipped:
            messages.warning(request, f"Not active, no credentials to rotate: {', '.join(skipped)}.")
        return self._secrets_page(request, "New device secrets", issued) if issued else None

    @admin.action(description="Move selected devices to a group", permissions=["change"])
    def move_to_group(self, request: HttpRequest, queryset: QuerySet) -> TemplateResponse | None:
        if "apply" in request.POST:
            form = MoveToGroupForm(request.POST)
            if form.is_valid():
                group = form.cleaned_data["group"]
                moved = services.move_devices(list(queryset.values_list("pk", flat=True)), group, actor=request.user)
                messages.success(request, f"{moved} devices moved to {group or 'no group'}.")
                return None
        else:
            form = MoveToGroupForm()
        context = {
            **self.admin_site.each_context(request),
            "title": "Move devices to a group",
            "form": form,
            "devices": queryset,
            "opts": self.model._meta,
            "action_checkbox_name": admin.helpers.ACTION_CHECKBOX_NAME,
        }
        return TemplateResponse(request, "admin/devices/device/move_to_group.html", context)

    def get_urls(self) -> list[Any]:
        return [
            path("import/", self.admin_site.admin_view(self.import_view), name="devices_device_import"),
            *super().get_urls(),
        ]

    def import_view(self, request: HttpRequest) -> HttpResponse:
        if not self.has_add_permission(request):
            return HttpResponse(status=403)
        errors: list[dict[str, Any]] = []
        detail = ""
        form = ImportForm(request.POST or None, request.FILES or None)
        if request.method == "POST" and form.is_valid():
            upload = form.cleaned_data["file"]
            try:
                if upload.size > settings.DEVICE_IMPORT_MAX_BYTES:
                    raise importers.ParseError(f"The file is over {settings.DEVICE_IMPORT_MAX_BYTES} bytes.")
                rows, errors = importers.parse_import(
                    upload.read(),
                    filename=upload.name,
                    content_type=upload.content_type or "",
                    max_rows=settings.DEVICE_IMPORT_MAX_ROWS,
                )
                if not rows:
                    raise importers.ParseError("The file has no devices.")
                result = services.import_devices(rows, actor=request.user, known_errors=errors)
                messages.success(request, f"{result.created} devices imported.")
                return HttpResponseRedirect(reverse("admin:devices_device_changelist"))
            except importers.ParseError as exc:
                detail = str(exc)
            except services.ImportFailed as exc:
                errors = exc.errors
            if errors:
                detail = services.import_failure_summary(errors)
        context = {
            **self.admin_site.each_context(request),
            "title": "Import devices",
            "form": form,
            "detail": detail,
            "errors": errors,
            "opts": self.model._meta,
        }
        return TemplateResponse(request, "admin/devices/device/import.html", context)


class DeviceGroupAdminForm(forms.ModelForm):
    class Meta:
        model = DeviceGroup
        fields = ["name", "description", "parent"]

    def clean_parent(self) -> DeviceGroup | None:
        parent = self.cleaned_data.get("parent")
        if parent and self.instance.pk and (parent.pk == self.instance.pk or self.instance.is_ancestor_of(parent)):
            raise ValidationError("A group cannot be moved under itself or one of its descendants.")
        return parent


@admin.register(DeviceGroup)
class DeviceGroupAdmin(admin.ModelAdmin):
    form = DeviceGroupAdminForm
    list_display = ["tree_name", "parent", "device_count", "devices_link"]
    search_fields = ["name", "description"]
    list_select_related = ["parent"]
    readonly_fields = ["path", "created_at", "updated_at"]
    ordering = ["path"]

    def get_queryset(self, request: HttpRequest) -> QuerySet:
        return super().get_queryset(request).annotate(device_count=Count("devices"))

    def save_model(self, request: HttpRequest, obj: DeviceGroup, form: forms.ModelForm, change: bool) -> None:
        services.save_group(obj, actor=request.user)

    def delete_model(self, request: HttpRequest, obj: DeviceGroup) -> None:
        services.delete_group(obj, actor=request.user)

    @admin.display(description="name", ordering="path")
    def tree_name(self, obj: DeviceGroup) -> str:
        return format_html("{}{}", "\u2003" * max(obj.depth - 1, 0), obj.name)

    @admin.display(description="devices", ordering="device_count")
    def device_count(self, obj: DeviceGroup) -> int:
        return obj.device_count

    @admin.display(description="")
    def devices_link(self, obj: DeviceGroup) -> str:
        url = reverse("admin:devices_device_changelist")
        return format_html('<a href="{}?group__id__exact={}">devices</a>', url, obj.pk)


@admin.register(DeviceStatusChange)
class DeviceStatusChangeAdmin(admin.ModelAdmin):
    list_display = ["changed_at", "device", "old_status", "new_status", "reason", "changed_by"]
    list_filter = ["new_status", "old_status", "changed_at"]
    search_fields = ["device__id", "reason"]
    date_hierarchy = "changed_at"
    list_select_related = ["changed_by"]

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False  # history is append-only; it goes with its device


@admin.register(DeviceCredential)
class DeviceCredentialAdmin(admin.ModelAdmin):
    """Shows which devices hold a secret and since when; never the hash."""

    list_display = ["device", "issued_at"]
    fields = ["device", "issued_at"]
    search_fields = ["device__id"]

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False  # secrets end through the device actions (disable, rotate), which announce it
