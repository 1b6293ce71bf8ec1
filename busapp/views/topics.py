"""Topics in the dashboard: bus admins create one with its first event type and schema; editors change it."""

from __future__ import annotations

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.contrib.auth.models import User
from django.core.exceptions import PermissionDenied
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.views.decorators.http import require_GET, require_http_methods

from busapp.actions.registry import (
    may_create_topics,
    may_edit_topic,
    topic_create_with_type,
    topic_name_problem,
    topic_update,
)
from busapp.actions.sensitivity import may_change_sensitivity
from busapp.errors import BusInputError, RightRefusedError
from busapp.forms import TopicCreateForm, TopicEditForm, problems_shown
from busapp.models import TOPIC_NAME_EXAMPLE, AuditAction, Topic
from busapp.views.access import refuse_audited, signed_in_user

_NOT_CREATOR = "only bus admins create topics"


def _topic_creator(request: HttpRequest) -> User:
    """The signed-in bus admin; anyone else gets 403 (a refused POST is audited)."""
    user = signed_in_user(request)
    if may_create_topics(user):
        return user
    if request.method == "POST":
        refuse_audited(request, AuditAction.MANAGE_REFUSED, "topic:new", _NOT_CREATOR)
    raise PermissionDenied(_NOT_CREATOR)


@login_required
@require_http_methods(["GET", "POST"])
def topic_new(request: HttpRequest) -> HttpResponse:
    """GET: the new-topic form. POST: create the topic, its first event type and schema v1, or show each problem."""
    user = _topic_creator(request)
    form = TopicCreateForm(request.POST if request.method == "POST" else None)
    if form.is_bound and form.is_valid():
        data = form.cleaned_data
        try:
            topic = topic_create_with_type(
                name=data["name"],
                description=data["description"],
                owner=data["owner"],
                sensitive=data["sensitive"],
                stream_retention=data["stream_retention"],
                type_name=data["type_name"],
                type_description=data["type_description"],
                schema=data["schema"],
                source=request.POST.get("schema", ""),
                actor=user,
            )
        except BusInputError as refused:
            problems_shown(form, refused.errors)
        else:
            messages.success(request, f"Created {topic.name} with {data['type_name']} and its schema v1.")
            return redirect("topic-detail", topic.name)
    context = {"form": form, "name_example": TOPIC_NAME_EXAMPLE}
    return render(request, "topics/new.html", context, status=400 if form.errors else 200)


@login_required
@require_GET
def topic_name_check(request: HttpRequest) -> JsonResponse:
    """The new-topic form's live check: whether ``?name=`` may be a new topic's name, by the rule creation applies."""
    _topic_creator(request)
    name = request.GET.get("name", "")
    if not name:
        message = f"is required: agency.domain.event, like {TOPIC_NAME_EXAMPLE}"
        return JsonResponse({"name": name, "ok": False, "message": message})
    problem = topic_name_problem(name)
    message = problem or f"{name} follows the naming rule and is free"
    return JsonResponse({"name": name, "ok": problem is None, "message": message})


@login_required
@require_http_methods(["GET", "POST"])
def topic_edit(request: HttpRequest, name: str) -> HttpResponse:
    """GET: the topic's edit form on a page of its own. POST: save its description, owner and stream retention."""
    topic = get_object_or_404(Topic.objects.select_related("owner"), name=name)
    user = signed_in_user(request)
    if not may_edit_topic(user, topic):
        message = f"you may not edit topic {name}: bus admins, or people who manage the topic, may"
        if request.method == "POST":
            refuse_audited(request, AuditAction.MANAGE_REFUSED, f"topic:{name}", message)
        raise PermissionDenied(message)
    form = TopicEditForm(request.POST if request.method == "POST" else None, topic=topic)
    if form.is_bound and form.is_valid():
        data = form.cleaned_data
        try:
            topic_update(
                topic=topic,
                description=data["description"],
                owner=data["owner"],
                stream_retention=data["stream_retention"],
                reason=data["reason"],
                actor=user,
            )
        except RightRefusedError as refused:  # the right went away since the page was opened
            refuse_audited(request, AuditAction.MANAGE_REFUSED, f"topic:{name}", refused.errors[0]["message"])
        except BusInputError as refused:
            problems_shown(form, refused.errors)
        else:
            messages.success(request, f"Saved {topic.name}: the change is in the audit log.")
            return redirect("topic-detail", topic.name)
    context = {"topic": topic, "edit_form": form, "may_change_sensitive": may_change_sensitivity(user)}
    return render(request, "topics/edit.html", context, status=400 if form.errors else 200)
