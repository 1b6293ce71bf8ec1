"""The bus app: topics, schemas, events, dead letters and the audit log."""

from typing import Any

from django.apps import AppConfig
from django.db.models.signals import post_migrate


def _roles_after_migrate(**kwargs: Any) -> None:
    """Keep the three role groups and their permissions in place after every migrate."""
    from busapp.actions.registry import roles_ensure

    roles_ensure()


class BusappConfig(AppConfig):
    """Configuration of the bus app."""

    default_auto_field = "django.db.models.BigAutoField"
    name = "busapp"
    verbose_name = "HMS Synchronization Event Bus"

    def ready(self) -> None:
        """Connect the role set-up (it runs after Django has created this app's permissions) and the lock-out audit."""
        post_migrate.connect(_roles_after_migrate, sender=self)
        from axes.signals import user_locked_out

        from busapp.signin import signin_locked_out

        # A lock-out of sign-in (django-axes) goes into the audit log.
        user_locked_out.connect(signin_locked_out, dispatch_uid="busapp.signin_locked_out")
