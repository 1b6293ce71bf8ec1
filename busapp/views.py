"""Pages and the health check; thin: read, render."""

from django.db import DatabaseError, connection
from django.http import HttpRequest, HttpResponseRedirect, JsonResponse
from django.shortcuts import redirect
from django.views.decorators.http import require_GET

from busapp.publishing import bus_reachable
from busapp.selectors import pending_event_count


@require_GET
def home(request: HttpRequest) -> HttpResponseRedirect:
    """Until the dashboard exists, the Django admin is the way in."""
    return redirect("admin:index")


@require_GET
def health(request: HttpRequest) -> JsonResponse:
    """For load balancers and operators: database and Redis reachability, events still pending."""
    database_ok = True
    try:
        connection.ensure_connection()
        pending = pending_event_count()
    except DatabaseError:
        database_ok, pending = False, -1
    redis_ok = bus_reachable()
    status = 200 if database_ok and redis_ok else 503
    return JsonResponse({"database": database_ok, "redis": redis_ok, "pending_events": pending}, status=status)
