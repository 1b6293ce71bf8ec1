"""Subscribers: the services expected to apply what is published, and what they follow (bus admins change it)."""

from __future__ import annotations

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.core.exceptions import PermissionDenied
from django.db.models import Prefetch
from django.http import HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.views.decorators.http import require_http_methods, require_POST

from busapp.actions.subscribers import (
    may_manage_subscribers,
    subscriber_create,
    subscriber_follow,
    subscriber_unfollow,
)
from busapp.delivery import deliveries
from busapp.errors import BusInputError
from busapp.forms import FollowForm, SubscriberForm, problems_shown
from busapp.models import AuditAction, ServiceToken, Subscriber, SubscriberFollow, Topic
from busapp.views.access import refuse_audited, signed_in_user

_NOT_ADMIN = "only bus admins register subscribers and say what they follow"


def _viewer(request: HttpRequest) -> None:
    """People who may see subscribers (auditors, bus admins); 403 for the others."""
    if not signed_in_user(request).has_perm("busapp.view_subscriber"):
        raise PermissionDenied("you may not see the subscribers")


def _admin(request: HttpRequest) -> None:
    """Bus admins; anyone else's write is refused, and written down."""
    if not may_manage_subscribers(signed_in_user(request)):
        refuse_audited(request, AuditAction.MANAGE_REFUSED, "subscribers", _NOT_ADMIN)


def _page(
    request: HttpRequest,
    *,
    subscriber_form: SubscriberForm | None = None,
    follow_form: FollowForm | None = None,
    status: int = 200,
) -> HttpResponse:
    """Every subscriber with the topics it follows; the forms for bus admins."""
    follows = SubscriberFollow.objects.select_related("topic").prefetch_related("event_types")
    live_tokens = ServiceToken.objects.filter(revoked_at__isnull=True).order_by("name", "prefix")
    subscribers = Subscriber.objects.select_related("owner").prefetch_related(
        Prefetch("follows", queryset=follows), Prefetch("tokens", queryset=live_tokens)
    )
    context = {
        "subscribers": subscribers,
        "may_manage": may_manage_subscribers(signed_in_user(request)),
        "subscriber_form": subscriber_form or SubscriberForm(),
        "follow_form": follow_form or FollowForm(),
        "deliveries": deliveries(for_page=True),
    }
    return render(request, "subscribers/list.html", context, status=status)


@login_required
@require_http_methods(["GET", "POST"])
def subscriber_list(request: HttpRequest) -> HttpResponse:
    """GET: the subscribers. POST: register one (bus admins)."""
    _viewer(request)
    if request.method == "GET":
        return _page(request)
    _admin(request)
    form = SubscriberForm(request.POST)
    if form.is_valid():
        data = form.cleaned_data
        try:
            subscriber_create(
                name=data["name"],
                description=data["description"],
                owner=data["owner"],
                contact=data["contact"],
                actor=signed_in_user(request),
            )
        except BusInputError as refused:
            problems_shown(form, refused.errors)
        else:
            messages.success(request, f"{data['name']} registered: say which topics it follows.")
            return redirect("subscribers")
    return _page(request, subscriber_form=form, status=400)


@login_required
@require_POST
def subscriber_follows(request: HttpRequest) -> HttpResponse:
    """A bus admin says a subscriber follows a topic (some types, or all) within an apply deadline."""
    _viewer(request)
    _admin(request)
    form = FollowForm(request.POST)
    if form.is_valid():
        data = form.cleaned_data
        try:
            subscriber_follow(
                subscriber=data["subscriber"],
                topic=data["topic"],
                event_types=list(data["event_types"]),
                apply_deadline=data["apply_deadline"],
                actor=signed_in_user(request),
            )
        except BusInputError as refused:
            problems_shown(form, refused.errors)
        else:
            messages.success(request, f"{data['subscriber']} follows {data['topic'].name}.")
            return redirect("subscribers")
    return _page(request, follow_form=form, status=400)


@login_required
@require_POST
def subscriber_unfollows(request: HttpRequest, name: str, topic: str) -> HttpResponse:
    """A bus admin says a subscriber no longer follows a topic."""
    _viewer(request)
    _admin(request)
    subscriber = get_object_or_404(Subscriber, name=name)
    try:
        subscriber_unfollow(
            subscriber=subscriber, topic=get_object_or_404(Topic, name=topic), actor=signed_in_user(request)
        )
    except BusInputError as refused:
        messages.error(request, refused.errors[0]["message"])
    else:
        messages.success(request, f"{subscriber} no longer follows {topic}.")
    return redirect("subscribers")
