"""Who applied what, as page parts: a topic's values in force, an event's expected services, the drifting services.

Each part is rendered with its page and again on its own, when ``static/js/applied.js`` hears a
receipt or a drift on the page's topics (or a deadline passes) and swaps it in place.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from django.contrib.auth.decorators import login_required
from django.http import HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404, render
from django.utils import timezone
from django.views.decorators.http import require_GET

from busapp.applied import drifts_open, event_services, next_due_in, receipts_rejected_count, topic_values_in_force
from busapp.models import Event, SubscriberFollow, Topic
from busapp.permissions import VIEW_TOPIC
from busapp.selectors import topics_visible_to
from busapp.views.access import signed_in_user, topic_with_right


def in_force_context(topic: Topic) -> dict[str, Any]:
    """The topic's values in force with who is on them, and when the next deadline passes."""
    now = timezone.now()
    values = topic_values_in_force(topic, now=now)
    waits = [wait for value in values if (wait := next_due_in(value.services, now)) is not None]
    return {"topic": topic, "values": values, "next_due": min(waits) if waits else None}


def services_context(event: Event) -> dict[str, Any]:
    """The event's expected services and when the next of their deadlines passes."""
    now = timezone.now()
    services = event_services(event, now=now)
    return {"event": event, "services": services, "next_due": next_due_in(services, now)}


def drifting_context(topics: Any) -> dict[str, Any]:
    """The services behind on a value in force on these topics, longest first, and the day's rejections."""
    return {
        "drifts": drifts_open(topics),
        "following": SubscriberFollow.objects.filter(topic__in=topics).exists(),
        "rejected_today": receipts_rejected_count(topics, since=timezone.now() - dt.timedelta(hours=24)),
    }


@login_required
@require_GET
def topic_in_force(request: HttpRequest, name: str) -> HttpResponse:
    """The topic page's "in force now" part, for whoever may view the topic."""
    topic = topic_with_right(request, name, VIEW_TOPIC)
    return render(request, "topics/_in_force.html", in_force_context(topic))


@login_required
@require_GET
def event_services_part(request: HttpRequest, envelope_id: str) -> HttpResponse:
    """The event record's table of expected services, for whoever may view its topic."""
    event = get_object_or_404(Event.objects.select_related("topic", "event_type"), envelope_id=envelope_id)
    topic_with_right(request, event.topic.name, VIEW_TOPIC)
    return render(request, "events/_services.html", services_context(event))


@login_required
@require_GET
def drifting_part(request: HttpRequest) -> HttpResponse:
    """The dashboard's drifting services, on the topics this person may see."""
    topics = topics_visible_to(signed_in_user(request))
    return render(request, "subscribers/_drifting.html", drifting_context(topics))
