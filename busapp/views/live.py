"""Live traffic: the page, and the history a reconnecting page asks for to fill the gap."""

from __future__ import annotations

from django.contrib.auth.decorators import login_required
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.shortcuts import render
from django.views.decorators.http import require_GET

from busapp.live import live_item
from busapp.models import Source
from busapp.selectors import events_after, topics_visible_to
from busapp.views.access import signed_in_user

GAP_FILL_LIMIT = 500


@login_required
@require_GET
def live_traffic(request: HttpRequest) -> HttpResponse:
    """Events as they go over the bus, newest first, for the topics this person may view."""
    topics = list(topics_visible_to(signed_in_user(request)).values_list("name", flat=True))
    return render(request, "live/traffic.html", {"topics": topics, "source_labels": dict(Source.choices)})


@login_required
@require_GET
def live_events_after(request: HttpRequest) -> JsonResponse:
    """Events after the one a page saw last (or the newest, without ``after``), oldest first, as live items."""
    topics = topics_visible_to(signed_in_user(request))
    after = request.GET.get("after") or None
    found = events_after(topics=topics, envelope_id=after, limit=GAP_FILL_LIMIT)
    if found is None:
        message = "is not an event id you may see: reload the page"
        return JsonResponse({"errors": [{"path": "/after", "message": message}]}, status=400)
    events, more = found
    return JsonResponse({"events": [live_item(event) for event in events], "more": more})
