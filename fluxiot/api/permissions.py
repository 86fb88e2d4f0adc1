"""API permissions: Django model permissions on every endpoint, reads included."""

from typing import Any

from rest_framework import permissions


class ModelPermissions(permissions.DjangoModelPermissions):
    """Like DRF's, but reading needs the model's ``view`` permission too.

    A view may name the permissions of its custom actions in ``action_perms``
    (``{"activate": ["devices.activate_device"]}``); those replace the method-based ones.
    """

    perms_map = {
        **permissions.DjangoModelPermissions.perms_map,
        "GET": ["%(app_label)s.view_%(model_name)s"],
        "OPTIONS": ["%(app_label)s.view_%(model_name)s"],
        "HEAD": ["%(app_label)s.view_%(model_name)s"],
    }

    def has_permission(self, request: Any, view: Any) -> bool:
        action_perms = getattr(view, "action_perms", {}).get(getattr(view, "action", None))
        if action_perms is None:
            return super().has_permission(request, view)
        user = request.user
        return bool(user and user.is_authenticated and user.has_perms(action_perms))
