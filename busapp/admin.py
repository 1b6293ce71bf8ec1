"""Django admin: topics and schemas change only through the actions (so they are audited).

History is read-only; the last active Bus admin stays one; rights and a topic's ``sensitive``
flag are not changed here at all.

Per-topic rights are granted and revoked only at ``/access/`` (``busapp.actions.access``: a reason, an
optional expiry, an audit entry). So Topic is a plain ModelAdmin, not django-guardian's
GuardedModelAdmin, whose "Object permissions" screens granted rights with none of these; its
URLs answer 404. Guardian's backend still answers every permission check. A person's own
permissions and a group's are shown read-only: the roles' rights are set in code
(``busapp.permissions.ROLE_PERMISSIONS``), and a global right is a right on every topic.
"""

from typing import Any, TypeVar

from django import forms
from django.contrib import admin
from django.contrib.auth.admin import GroupAdmin, UserAdmin
from django.contrib.auth.forms import UserChangeForm
from django.contrib.auth.models import Group, User
from django.db import models
from django.http import Http404, HttpRequest, HttpResponse
from django.urls import URLPattern, re_path

from busapp.actions.access import last_bus_admin_message, user_admin_change_record
from busapp.actions.registry import (
    event_type_create,
    record_change,
    schema_version_check,
    schema_version_create,
    topic_create,
    topic_update,
)
from busapp.errors import SchemaInvalidError
from busapp.forms import CarriedJSONField
from busapp.models import AuditAction, AuditEntry, DeadLetter, Event, EventType, SchemaVersion, Topic
from busapp.permissions import Role

_M = TypeVar("_M", bound=models.Model)


class ReadOnlyAdmin(admin.ModelAdmin[_M]):
    """Browse only: history, dead letters and the audit log are never edited by hand."""

    def has_add_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        """Nobody adds rows here."""
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        """Nobody changes rows here."""
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        """Nobody deletes rows here."""
        return False


@admin.register(Topic)
class TopicAdmin(admin.ModelAdmin[Topic]):
    """Topics: created and described here; rights at /access/, the sensitive flag on the topic's four-eyes page."""

    list_display = ["name", "owner", "sensitive", "stream_retention", "created_at"]
    search_fields = ["name", "description"]

    def get_urls(self) -> list[URLPattern]:
        """Django's topic pages, and a 404 where guardian's object-permission screens were (bookmarks of them)."""
        # Unanchored: every screen under it (user-manage/<id>/, group-manage/<id>/) too.
        gone = re_path(r"^(?P<object_id>[^/]+)/permissions/", self.admin_site.admin_view(self.object_permissions_gone))
        return [gone, *super().get_urls()]

    def object_permissions_gone(self, request: HttpRequest, object_id: str) -> HttpResponse:
        """No screen here grants or revokes a per-topic right: that is /access/, with a reason and an audit entry."""
        raise Http404("per-topic rights are granted and revoked at /access/ (with a reason, audited), not here")

    def get_readonly_fields(self, request: HttpRequest, obj: Any = None) -> list[str]:
        """A topic's name is its channel (fixed once subscribers listen); ``sensitive`` changes only by four eyes."""
        return ["name", "sensitive", "created_by", "created_at"] if obj else ["created_by", "created_at"]

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        """Topics keep their history: never deleted."""
        return False

    def save_model(self, request: HttpRequest, obj: Topic, form: Any, change: bool) -> None:
        """New topics go through ``topic_create``, edits through ``topic_update``, as on the dashboard: audited."""
        if change:
            if form.changed_data:
                topic_update(
                    topic=obj,
                    description=obj.description,
                    owner=obj.owner,
                    stream_retention=obj.stream_retention,
                    actor=request.user,  # type: ignore[arg-type]
                )
            return
        created = topic_create(
            name=obj.name,
            description=obj.description,
            sensitive=obj.sensitive,
            stream_retention=obj.stream_retention,
            owner=obj.owner,
            actor=request.user,  # type: ignore[arg-type]
        )
        obj.pk = created.pk


@admin.register(EventType)
class EventTypeAdmin(admin.ModelAdmin[EventType]):
    """Event types of each topic."""

    list_display = ["name", "topic", "compatibility_mode", "compatibility_policy", "created_at"]
    list_filter = ["topic"]

    def get_readonly_fields(self, request: HttpRequest, obj: Any = None) -> list[str]:
        """Events refer to an event type by name: it is fixed once created."""
        return ["topic", "name"] if obj else []

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        """Event types keep their history: never deleted."""
        return False

    def save_model(self, request: HttpRequest, obj: EventType, form: Any, change: bool) -> None:
        """New event types go through ``event_type_create`` so they are audited; so are edits."""
        if change:
            record_change(obj=obj, changed_fields=form.changed_data, actor=request.user)  # type: ignore[arg-type]
            return
        created = event_type_create(
            topic=obj.topic,
            name=obj.name,
            description=obj.description,
            actor=request.user,  # type: ignore[arg-type]
        )
        obj.pk = created.pk


class SchemaVersionForm(forms.ModelForm[SchemaVersion]):
    """Adding a version checks the schema (Draft 2020-12, refs, compatibility) before saving."""

    class Meta:
        model = SchemaVersion
        fields = ["event_type", "schema", "compatibility"]
        field_classes = {"schema": CarriedJSONField}  # deep, NUL or surrogate text: an error, not a 500

    def clean(self) -> dict[str, Any]:
        """Check the schema now, so a refusal is shown next to the schema field instead of failing the save."""
        cleaned: dict[str, Any] = super().clean() or {}
        event_type, schema = cleaned.get("event_type"), cleaned.get("schema")
        if event_type is not None and schema is not None:
            try:
                schema_version_check(
                    event_type=event_type, schema=schema, compatibility=cleaned.get("compatibility", "backward")
                )
            except SchemaInvalidError as error:
                self.add_error("schema", str(error))
        return cleaned


@admin.register(SchemaVersion)
class SchemaVersionAdmin(admin.ModelAdmin[SchemaVersion]):
    """Schema versions: added through ``schema_version_create``, immutable afterwards."""

    form = SchemaVersionForm
    list_display = ["event_type", "version", "compatibility", "state", "created_at"]
    list_filter = ["state", "event_type__topic"]

    def get_readonly_fields(self, request: HttpRequest, obj: Any = None) -> list[str]:
        """Everything is fixed once saved; the state changes on the topic page, with a reason."""
        if obj is None:
            return []
        return [
            "event_type",
            "version",
            "schema",
            "fingerprint",
            "compatibility",
            "state",
            "state_changed_at",
            "created_by",
            "created_at",
        ]

    def get_fields(self, request: HttpRequest, obj: Any = None) -> Any:
        """Adding asks for the schema; viewing shows it all."""
        if obj is None:
            return ["event_type", "schema", "compatibility"]
        return self.get_readonly_fields(request, obj)

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        """Events point at their schema version: never deleted."""
        return False

    def save_model(self, request: HttpRequest, obj: SchemaVersion, form: Any, change: bool) -> None:
        """Add through the service (a saved version has no editable field)."""
        if change:
            return
        created = schema_version_create(
            event_type=obj.event_type,
            schema=obj.schema,
            compatibility=obj.compatibility,
            actor=request.user,  # type: ignore[arg-type]
        )
        obj.pk, obj.version = created.pk, created.version


@admin.register(Event)
class EventAdmin(ReadOnlyAdmin[Event]):
    """The event history."""

    list_display = ["envelope_id", "topic", "event_type", "status", "source", "publisher_name", "timestamp"]
    list_filter = ["status", "source", "topic"]
    search_fields = ["envelope_id"]


@admin.register(DeadLetter)
class DeadLetterAdmin(ReadOnlyAdmin[DeadLetter]):
    """Dead letters as they arrived."""

    list_display = ["id", "topic", "status", "source", "received_at"]
    list_filter = ["status", "source", "topic"]


@admin.register(AuditEntry)
class AuditEntryAdmin(ReadOnlyAdmin[AuditEntry]):
    """The append-only audit log."""

    list_display = ["seq", "time", "actor_name", "action", "target"]
    list_filter = ["action"]
    search_fields = ["target", "actor_name"]


def _leaves_no_bus_admin(leaving: set[int]) -> bool:
    """Whether, without these people, no active Bus admin would be left (while there is one now)."""
    admins = User.objects.filter(groups__name=Role.BUS_ADMINS.value, is_active=True)
    return admins.filter(pk__in=leaving).exists() and not admins.exclude(pk__in=leaving).exists()


class _KeepsABusAdminForm(UserChangeForm[User]):
    """Django's user form, refusing to take the last active Bus admin out of the role or to deactivate them."""

    def clean(self) -> dict[str, Any]:
        """Refuse a change that leaves no active Bus admin (as ``/access/`` does)."""
        cleaned = super().clean() or self.cleaned_data
        user = self.instance
        groups = cleaned.get("groups") if "groups" in self.fields else None
        stays_admin = groups is None or groups.filter(name=Role.BUS_ADMINS.value).exists()
        if user.pk and not (stays_admin and cleaned.get("is_active", True)) and _leaves_no_bus_admin({user.pk}):
            raise forms.ValidationError(last_bus_admin_message(user))
        return cleaned


admin.site.unregister(User)


@admin.register(User)
class BusUserAdmin(UserAdmin[User]):
    """Django's user admin, which never leaves the bus without an active Bus admin (nor does ``/access/``).

    A person's own permissions are read-only: a global right is that right on every topic,
    given at /access/ (a role) or never.
    """

    form = _KeepsABusAdminForm
    readonly_fields = ["user_permissions"]

    def log_addition(self, request: HttpRequest, obj: Any, message: Any) -> Any:
        """Django's admin log, and the audit log: a person added here."""
        _audit_user_change(request, AuditAction.USER_CREATE, obj, message)
        return super().log_addition(request, obj, message)

    def log_change(self, request: HttpRequest, obj: Any, message: Any) -> Any:
        """Django's admin log, and the audit log: which fields changed, and the person's roles now."""
        _audit_user_change(request, AuditAction.USER_CHANGE, obj, message)
        return super().log_change(request, obj, message)

    def log_deletions(self, request: HttpRequest, queryset: Any) -> Any:
        """Django's admin log, and the audit log: each person about to be deleted."""
        for user in queryset:
            _audit_user_change(request, AuditAction.USER_DELETE, user, [])
        return super().log_deletions(request, queryset)

    def get_deleted_objects(self, objs: Any, request: HttpRequest) -> tuple[Any, Any, Any, list[Any]]:
        """Deleting the last active Bus admin is refused: the page lists them as protected."""
        deletable, counts, perms_needed, protected = super().get_deleted_objects(objs, request)
        users = list(objs)
        if _leaves_no_bus_admin({user.pk for user in users}):
            names = ", ".join(user.get_username() for user in users if user.is_active)
            protected = [*protected, f"{names}: the last active Bus admin; make someone else one first"]
        return deletable, counts, perms_needed, protected


def _audit_user_change(request: HttpRequest, action: AuditAction, user: User, message: Any) -> None:
    """Record a change the admin site made to a person (in its transaction), with the fields its message names."""
    changed = sorted({field for change in message for field in change.get("changed", {}).get("fields", [])})
    user_admin_change_record(actor=request.user, action=action, user=user, changed=changed)  # type: ignore[arg-type]  # staff only


admin.site.unregister(Group)


@admin.register(Group)
class RoleGroupAdmin(GroupAdmin):
    """Groups, with their permissions read-only: the roles' rights are set in code, per-topic ones at /access/."""

    readonly_fields = ["permissions"]
