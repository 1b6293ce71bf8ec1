"""The topic page's edit form, for those who may edit the topic (a tag of its own: the page's view is untouched)."""

from __future__ import annotations

from typing import Any

from django import template
from django.contrib.auth.models import User

from busapp.actions.registry import may_edit_topic
from busapp.actions.sensitivity import may_change_sensitivity
from busapp.forms import TopicEditForm
from busapp.models import Topic

register = template.Library()


@register.inclusion_tag("topics/_edit_panel.html", takes_context=True)
def topic_edit_form(context: template.Context, topic: Topic) -> dict[str, Any]:
    """The folded edit form of ``topic`` for a bus admin or someone who manages it; nothing for anyone else."""
    user = context["request"].user
    if not (isinstance(user, User) and may_edit_topic(user, topic)):
        return {"may_edit": False}
    return {
        "may_edit": True,
        "topic": topic,
        "edit_form": TopicEditForm(topic=topic),
        "may_change_sensitive": may_change_sensitivity(user),
        "csrf_token": context.get("csrf_token"),
    }
