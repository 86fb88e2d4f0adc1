from typing import Any

from django.apps import AppConfig, apps
from django.contrib.admin import apps as admin_apps
from django.db.models.signals import post_migrate


class FluxAdminConfig(admin_apps.AdminConfig):
    default = False
    default_site = "fluxiot.admin.FluxAdminSite"


def _refresh_roles(sender: AppConfig, **kwargs: Any) -> None:
    """After a migrate, give the roles the permissions of every app (the data migrations created
    them, but only with the permissions that existed at that point)."""
    last = [config for config in apps.get_app_configs() if config.models_module is not None][-1]
    if sender is last:
        from fluxiot.roles import sync_roles

        sync_roles(kwargs.get("apps") or apps, using=kwargs.get("using", "default"))


class FluxiotConfig(AppConfig):
    default = True
    name = "fluxiot"
    verbose_name = "FluxIoT"

    def ready(self) -> None:
        post_migrate.connect(_refresh_roles, dispatch_uid="fluxiot.refresh_roles")
