"""The bus app: topics, schemas, events, dead letters and the audit log."""

from typing import Any

from django.apps import AppConfig
from django.db.models.signals import post_migrate


def _roles_after_migrate(**kwargs: Any) -> None:
    """Keep the three role groups and their permissions in place after every migrate."""
    from busapp.services import roles_ensure

    roles_ensure()


class BusappConfig(AppConfig):
    """Configuration of the bus app."""

    default_auto_field = "django.db.models.BigAutoField"
    name = "busapp"
    verbose_name = "HMS Synchronization Event Bus"

    def ready(self) -> None:
        """Connect the role set-up; it runs after Django has created this app's permissions."""
        post_migrate.connect(_roles_after_migrate, sender=self)
