"""Subscribers: the services that must apply what the bus publishes, registered by bus admins, each change audited."""

from __future__ import annotations

from collections.abc import Sequence

from django.contrib.auth.models import Group, User
from django.core.exceptions import ValidationError
from django.db import IntegrityError, transaction

from busapp.audit import Actor, actor_parts, audit_record
from busapp.errors import ActionRefusedError, FieldError, RecordInvalidError, RightRefusedError
from busapp.models import APPLY_DEADLINE_DEFAULT, AuditAction, EventType, Subscriber, SubscriberFollow, Topic

ADD_SUBSCRIBER = "busapp.add_subscriber"  # the bus admins' right to register subscribers
CHANGE_SUBSCRIBER = "busapp.change_subscriber"  # and to change what they follow


def may_manage_subscribers(user: User) -> bool:
    """Active bus admins register subscribers and say what they follow."""
    return user.is_active and user.has_perm(ADD_SUBSCRIBER) and user.has_perm(CHANGE_SUBSCRIBER)


def _admin_checked(actor: Actor) -> None:
    """Refuse a person who is not a bus admin (a command's actor is whoever runs manage.py)."""
    if isinstance(actor, User) and not may_manage_subscribers(actor):
        message = f"{actor.get_username()} is not a bus admin: only bus admins register subscribers"
        raise RightRefusedError([{"path": "", "message": message}])


def _problems(error: ValidationError) -> list[FieldError]:
    """A model's validation errors at ``/<field>``."""
    return [
        {"path": f"/{field}", "message": message}
        for field, messages in error.message_dict.items()
        for message in messages
    ]


@transaction.atomic
def subscriber_create(
    *, name: str, actor: Actor, description: str = "", owner: Group | None = None, contact: str = ""
) -> Subscriber:
    """Register a service that will follow topics; its name is also its Redis consumer group's."""
    _admin_checked(actor)
    user, _ = actor_parts(actor)
    subscriber = Subscriber(name=name, description=description, owner=owner, contact=contact, created_by=user)
    try:
        subscriber.full_clean()
        with transaction.atomic():
            subscriber.save()
    except ValidationError as error:
        raise RecordInvalidError(_problems(error)) from None
    except IntegrityError:  # registered by someone else since the check
        raise ActionRefusedError([{"path": "/name", "message": f"{name!r} is registered already"}]) from None
    details = {"description": description, "contact": contact, **({"owner": owner.name} if owner else {})}
    audit_record(actor=actor, action=AuditAction.SUBSCRIBER_CREATE, target=f"subscriber:{name}", details=details)
    return subscriber


@transaction.atomic
def subscriber_follow(
    *,
    subscriber: Subscriber,
    topic: Topic,
    actor: Actor,
    apply_deadline: int = APPLY_DEADLINE_DEFAULT,
    event_types: Sequence[EventType] = (),
) -> SubscriberFollow:
    """Say the subscriber follows the topic (some types, or all) and must apply each event within the deadline."""
    _admin_checked(actor)
    foreign = [kind.name for kind in event_types if kind.topic_id != topic.pk]
    if foreign:
        message = f"{', '.join(foreign)} not on topic {topic.name}"
        raise RecordInvalidError([{"path": "/event_types", "message": message}])
    follow = SubscriberFollow.objects.filter(subscriber=subscriber, topic=topic).first()
    before = (follow.apply_deadline, sorted(kind.name for kind in follow.event_types.all())) if follow else None
    follow = follow or SubscriberFollow(subscriber=subscriber, topic=topic)
    follow.apply_deadline = apply_deadline
    try:
        follow.full_clean(validate_unique=False)
    except ValidationError as error:
        raise RecordInvalidError(_problems(error)) from None
    after = (apply_deadline, sorted(kind.name for kind in event_types))
    if before == after:
        message = f"{subscriber} follows {topic.name} so already: nothing to change"
        raise ActionRefusedError([{"path": "", "message": message}])
    follow.save()
    follow.event_types.set(event_types)
    audit_record(
        actor=actor,
        action=AuditAction.SUBSCRIBER_FOLLOW,
        target=f"subscriber:{subscriber}",
        details={
            "topic": topic.name,
            "apply_deadline": apply_deadline,
            "event_types": after[1] or "all",
            **({"was": {"apply_deadline": before[0], "event_types": before[1] or "all"}} if before else {}),
        },
    )
    return follow


@transaction.atomic
def subscriber_unfollow(*, subscriber: Subscriber, topic: Topic, actor: Actor) -> None:
    """The subscriber no longer follows the topic: its events stop being expected of it."""
    _admin_checked(actor)
    deleted, _ = SubscriberFollow.objects.filter(subscriber=subscriber, topic=topic).delete()
    if not deleted:
        message = f"{subscriber} does not follow {topic.name}"
        raise ActionRefusedError([{"path": "/topic", "message": message}])
    audit_record(
        actor=actor,
        action=AuditAction.SUBSCRIBER_UNFOLLOW,
        target=f"subscriber:{subscriber}",
        details={"topic": topic.name},
    )
