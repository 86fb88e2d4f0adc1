"""Shared serializer behaviour: model ``clean()`` runs for API writes, as it does in the admin."""

from __future__ import annotations

from typing import Any

from django.core.exceptions import ValidationError as DjangoValidationError
from rest_framework import serializers


class CleanModelSerializer(serializers.ModelSerializer):
    """Runs the model's ``clean()`` on the would-be instance so API, admin and import share one set
    of checks, and copies back what ``clean()`` normalised."""

    def validate(self, attrs: dict[str, Any]) -> dict[str, Any]:
        attrs = super().validate(attrs)
        model = self.Meta.model
        instance = (
            model(**{f.attname: getattr(self.instance, f.attname) for f in model._meta.concrete_fields})
            if self.instance
            else model()
        )
        for name, value in attrs.items():
            setattr(instance, name, value)
        try:
            instance.clean()
        except DjangoValidationError as exc:
            raise serializers.ValidationError(exc.message_dict if hasattr(exc, "error_dict") else exc.messages) from exc
        for name in attrs:
            attrs[name] = getattr(instance, name)
        return attrs
