"""Admin pages of device commands: read-only history (commands are created only through the
services: the API, or the console on a device's page), cancelling unfinished commands, and batches
with their progress."""

from __future__ import annotations

import json
import uuid
from collections import defaultdict
from typing import Any

from django.contrib import admin, messages
from django.contrib.admin.views.main import ChangeList
from django.core.exceptions import PermissionDenied
from django.db.models import Count, QuerySet
from django.http import HttpRequest, HttpResponse, HttpResponseNotAllowed, HttpResponseRedirect
from django.shortcuts import get_object_or_404
from django.urls import path, reverse
from django.utils.html import format_html, format_html_join
from django.utils.safestring import SafeString, mark_safe

from control import services
from control.choices import TERMINAL, CommandStatus
from control.models import CommandBatch, CommandReply, DeviceCommand
from fluxiot.admin import ReadOnlyTabularInline
from fluxiot.errors import ConflictError

SEND_PERMISSION = "control.send_command"
RECENT_BATCHES_IN_FILTER = 10


def status_badge(status: str) -> SafeString:
    """A command status as a coloured badge (styles in control/static/control/admin.css)."""
    label = CommandStatus(status).label if status in CommandStatus.values else status
    return format_html('<span class="command-status command-status-{}">{}</span>', status, label)


def pretty_json(value: Any) -> SafeString:
    if value is None:
        return mark_safe('<span class="quiet">—</span>')
    return format_html(
        '<pre class="command-json">{}</pre>', json.dumps(value, indent=2, sort_keys=True, ensure_ascii=False)
    )


def short_id(pk: uuid.UUID) -> str:
    return str(pk)[:8]


class ReadOnlyAdmin(admin.ModelAdmin):
    """Rows written only by the services: viewable, never added, edited or deleted here."""

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    class Media:
        css = {"all": ["control/admin.css"]}


class BatchFilter(admin.SimpleListFilter):
    """The latest batches (a changelist of every batch ever made would be far too long), single
    commands, and whichever batch the query names (``?batch=<id>``, the batch page's link)."""

    title = "batch"
    parameter_name = "batch"

    def _selected(self) -> uuid.UUID | None:
        try:
            return uuid.UUID(self.value() or "")
        except ValueError:
            return None

    def lookups(self, request: HttpRequest, model_admin: admin.ModelAdmin) -> list[tuple[str, str]]:
        batches = list(CommandBatch.objects.only("id", "command_type", "total")[:RECENT_BATCHES_IN_FILTER])
        selected = self._selected()
        if selected is not None and all(batch.pk != selected for batch in batches):
            batches += list(CommandBatch.objects.filter(pk=selected).only("id", "command_type", "total"))
        choices = [("none", "Not in a batch")]
        choices += [(str(b.pk), f"{short_id(b.pk)} · {b.command_type} × {b.total}") for b in batches]
        return choices

    def queryset(self, request: HttpRequest, queryset: QuerySet) -> QuerySet:
        if self.value() == "none":
            return queryset.filter(batch__isnull=True)
        if self.value():
            selected = self._selected()
            return queryset.filter(batch_id=selected) if selected else queryset.none()
        return queryset


class CommandReplyInline(ReadOnlyTabularInline):
    model = CommandReply
    fields = ["received_at", "status", "result", "error", "applied"]
    verbose_name_plural = "Replies received"


@admin.register(DeviceCommand)
class DeviceCommandAdmin(ReadOnlyAdmin):
    list_display = [
        "short_id",
        "device_link",
        "command_type",
        "status_display",
        "created_by",
        "created_at",
        "sent_at",
        "completed_at",
    ]
    list_filter = ["status", "command_type", "created_at", BatchFilter]
    # Prefixes: the short id shown in the list is the start of the full one.
    search_fields = ["^id", "^device__id"]
    search_help_text = "Command id (or its start) or device id (or its start)."
    date_hierarchy = "created_at"
    list_select_related = ["created_by"]
    list_per_page = 50
    show_full_result_count = False
    fieldsets = [
        (None, {"fields": ["id", "device_link", "batch_link", "command_type", "status_display", "created_by"]}),
        ("Params and outcome", {"fields": ["params_display", "result_display", "error"]}),
        (
            "Timing",
            {
                "fields": [
                    "timeout",
                    "expires_at",
                    "created_at",
                    "sent_at",
                    "deadline_at",
                    "delivered_at",
                    "completed_at",
                ]
            },
        ),
    ]
    readonly_fields = [
        "id",
        "device_link",
        "batch_link",
        "command_type",
        "status_display",
        "created_by",
        "params_display",
        "result_display",
        "error",
        "timeout",
        "expires_at",
        "created_at",
        "sent_at",
        "deadline_at",
        "delivered_at",
        "completed_at",
    ]
    inlines = [CommandReplyInline]
    actions = ["cancel_commands"]
    change_form_template = "admin/control/devicecommand/change_form.html"

    def lookup_allowed(self, lookup: str, value: str, request: HttpRequest | None = None) -> bool:
        # A device's commands, linked from its page (``?device__id__exact=<id>``).
        return lookup == "device__id__exact" or super().lookup_allowed(lookup, value, request)

    def has_cancel_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return request.user.has_perm(SEND_PERMISSION)

    @admin.display(description="id", ordering="id")
    def short_id(self, obj: DeviceCommand) -> str:
        return short_id(obj.pk)

    @admin.display(description="device", ordering="device_id")
    def device_link(self, obj: DeviceCommand) -> SafeString:
        url = reverse("admin:devices_device_change", args=[obj.device_id])
        return format_html('<a href="{}">{}</a>', url, obj.device_id)

    @admin.display(description="batch")
    def batch_link(self, obj: DeviceCommand) -> SafeString | str:
        if obj.batch_id is None:
            return "—"
        url = reverse("admin:control_commandbatch_change", args=[obj.batch_id])
        return format_html('<a href="{}">{}</a>', url, obj.batch_id)

    @admin.display(description="status", ordering="status")
    def status_display(self, obj: DeviceCommand) -> SafeString:
        return status_badge(obj.status)

    @admin.display(description="params")
    def params_display(self, obj: DeviceCommand) -> SafeString:
        return pretty_json(obj.params)

    @admin.display(description="result")
    def result_display(self, obj: DeviceCommand) -> SafeString:
        return pretty_json(obj.result)

    def _cancel(self, request: HttpRequest, pks: list[Any]) -> tuple[int, int]:
        cancelled = finished = 0
        for pk in pks:
            try:
                services.cancel_command(pk, actor=request.user)
            except ConflictError:
                finished += 1
            except DeviceCommand.DoesNotExist:  # deleted meanwhile (with its device)
                continue
            else:
                cancelled += 1
        return cancelled, finished

    def _report(self, request: HttpRequest, cancelled: int, finished: int) -> None:
        if cancelled:
            messages.success(request, f"{cancelled} command{'s' if cancelled != 1 else ''} cancelled.")
        if finished:
            verb = "were" if finished != 1 else "was"
            messages.warning(
                request,
                f"{finished} command{'s' if finished != 1 else ''} {verb} already finished and left as "
                f"{'they were' if finished != 1 else 'it was'}.",
            )

    @admin.action(description="Cancel selected commands", permissions=["cancel"])
    def cancel_commands(self, request: HttpRequest, queryset: QuerySet) -> None:
        pks = list(queryset.order_by().values_list("pk", flat=True))
        self._report(request, *self._cancel(request, pks))

    def get_urls(self) -> list[Any]:
        return [
            path(
                "<uuid:object_id>/cancel/",
                self.admin_site.admin_view(self.cancel_view),
                name="control_devicecommand_cancel",
            ),
            *super().get_urls(),
        ]

    def cancel_view(self, request: HttpRequest, object_id: uuid.UUID) -> HttpResponse:
        """The Cancel button of a command's page (POST)."""
        if request.method != "POST":
            return HttpResponseNotAllowed(["POST"])
        if not self.has_cancel_permission(request):
            raise PermissionDenied
        command = get_object_or_404(DeviceCommand, pk=object_id)
        self._report(request, *self._cancel(request, [command.pk]))
        return HttpResponseRedirect(reverse("admin:control_devicecommand_change", args=[command.pk]))

    def change_view(
        self, request: HttpRequest, object_id: str, form_url: str = "", extra_context: dict[str, Any] | None = None
    ) -> HttpResponse:
        context = dict(extra_context or {})
        context["can_cancel"] = self.has_cancel_permission(request)
        return super().change_view(request, object_id, form_url, extra_context=context)


def _counts_by_batch(batch_ids: list[uuid.UUID]) -> dict[uuid.UUID, dict[str, int]]:
    """Like ``services.batch_counts``, for many batches in one query."""
    counts: dict[uuid.UUID, dict[str, int]] = defaultdict(lambda: dict.fromkeys(CommandStatus.values, 0))
    rows = (
        DeviceCommand.objects.filter(batch_id__in=batch_ids)
        .order_by()
        .values("batch_id", "status")
        .annotate(n=Count("pk"))
    )
    for row in rows:
        counts[row["batch_id"]][row["status"]] = row["n"]
    return counts


class CommandBatchChangeList(ChangeList):
    """Counts the commands of every batch on the page with one query (not one per row)."""

    def get_results(self, request: HttpRequest) -> None:
        super().get_results(request)
        batches = list(self.result_list)  # evaluates (and caches) the page's queryset
        counts = _counts_by_batch([batch.pk for batch in batches])
        for batch in batches:
            batch.status_counts = counts[batch.pk]


def progress(batch: CommandBatch, counts: dict[str, int]) -> SafeString:
    finished = sum(n for status, n in counts.items() if status in TERMINAL)
    total = batch.total or sum(counts.values())
    badges = format_html_join(" ", '<span class="command-status command-status-{}">{} {}</span>', _present(counts))
    return format_html(
        '<progress value="{}" max="{}"></progress> <span class="command-progress">{}/{}</span> {}',
        finished,
        max(total, 1),
        finished,
        total,
        badges,
    )


def _present(counts: dict[str, int]) -> list[tuple[str, int, str]]:
    return [(status, n, CommandStatus(status).label.lower()) for status, n in counts.items() if n]


@admin.register(CommandBatch)
class CommandBatchAdmin(ReadOnlyAdmin):
    list_display = ["short_id", "command_type", "total", "progress_display", "created_by", "created_at"]
    list_filter = ["command_type", "created_at"]
    search_fields = ["^id"]
    date_hierarchy = "created_at"
    list_select_related = ["created_by"]
    list_per_page = 50
    fieldsets = [
        (None, {"fields": ["id", "command_type", "params_display", "created_by", "created_at"]}),
        ("Targets", {"fields": ["targets_display", "total", "skipped_display"]}),
        ("Delivery", {"fields": ["timeout", "expires_at"]}),
        ("Progress", {"fields": ["counts_display", "commands_link"]}),
    ]
    readonly_fields = [
        "id",
        "command_type",
        "params_display",
        "created_by",
        "created_at",
        "targets_display",
        "total",
        "skipped_display",
        "timeout",
        "expires_at",
        "counts_display",
        "commands_link",
    ]

    def get_changelist(self, request: HttpRequest, **kwargs: Any) -> type[ChangeList]:
        return CommandBatchChangeList

    def _counts(self, batch: CommandBatch) -> dict[str, int]:
        counts = getattr(batch, "status_counts", None)
        if counts is None:
            counts = batch.status_counts = services.batch_counts(batch)
        return counts

    @admin.display(description="id", ordering="id")
    def short_id(self, obj: CommandBatch) -> str:
        return short_id(obj.pk)

    @admin.display(description="progress (finished/total)")
    def progress_display(self, obj: CommandBatch) -> SafeString:
        return progress(obj, self._counts(obj))

    @admin.display(description="params")
    def params_display(self, obj: CommandBatch) -> SafeString:
        return pretty_json(obj.params)

    @admin.display(description="targets")
    def targets_display(self, obj: CommandBatch) -> SafeString:
        return pretty_json(obj.targets)

    @admin.display(description="skipped")
    def skipped_display(self, obj: CommandBatch) -> SafeString | str:
        if not obj.skipped:
            return "—"
        return ", ".join(f"{n} {reason.replace('_', ' ')}" for reason, n in sorted(obj.skipped.items()))

    @admin.display(description="commands per status")
    def counts_display(self, obj: CommandBatch) -> SafeString:
        counts = self._counts(obj)
        base = reverse("admin:control_devicecommand_changelist")
        rows = format_html_join(
            "",
            '<tr><td>{}</td><td class="command-count"><a href="{}?batch={}&amp;status__exact={}">{}</a></td></tr>',
            [(status_badge(status), base, obj.pk, status, n) for status, n in counts.items()],
        )
        return format_html(
            '<div class="command-batch-progress">{}</div><table class="command-counts"><tbody>{}</tbody></table>',
            progress(obj, counts),
            rows,
        )

    @admin.display(description="commands")
    def commands_link(self, obj: CommandBatch) -> SafeString:
        url = reverse("admin:control_devicecommand_changelist")
        return format_html('<a href="{}?batch={}">All {} commands of this batch</a>', url, obj.pk, obj.total)


@admin.register(CommandReply)
class CommandReplyAdmin(ReadOnlyAdmin):
    list_display = ["received_at", "command_link", "device", "status_display", "applied"]
    list_filter = ["status", "applied", "received_at"]
    search_fields = ["^command__id", "^command__device__id"]
    search_help_text = "Command id or device id (or their start)."
    date_hierarchy = "received_at"
    list_select_related = ["command"]
    list_per_page = 100
    show_full_result_count = False
    fields = ["command_link", "device", "status_display", "result", "error", "received_at", "applied"]
    readonly_fields = fields

    @admin.display(description="command", ordering="command_id")
    def command_link(self, obj: CommandReply) -> SafeString:
        url = reverse("admin:control_devicecommand_change", args=[obj.command_id])
        return format_html(
            '<a href="{}">{}</a> {}', url, short_id(obj.command_id), obj.command.get_command_type_display()
        )

    @admin.display(description="device", ordering="command__device_id")
    def device(self, obj: CommandReply) -> SafeString:
        url = reverse("admin:devices_device_change", args=[obj.command.device_id])
        return format_html('<a href="{}">{}</a>', url, obj.command.device_id)

    @admin.display(description="status", ordering="status")
    def status_display(self, obj: CommandReply) -> SafeString:
        return status_badge(obj.status)


from control.scenes import admin as scene_admin  # noqa: E402,F401
