"""``/metrics`` for Prometheus: from this machine, or with the token a scraper elsewhere is given."""

from __future__ import annotations

import hmac

from django.conf import settings
from django.http import HttpRequest, HttpResponse
from django.views.decorators.http import require_GET
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from busapp.metrics import registry

LOCAL_ADDRESSES = {"127.0.0.1", "::1"}


def _may_scrape(request: HttpRequest) -> bool:
    """A scraper on this machine, or one presenting ``Authorization: Bearer <METRICS_TOKEN>``."""
    token = settings.METRICS_TOKEN
    presented = request.headers.get("Authorization", "")
    if token and hmac.compare_digest(presented.encode(), f"Bearer {token}".encode()):
        return True
    return request.META.get("REMOTE_ADDR") in LOCAL_ADDRESSES


@require_GET
def metrics(request: HttpRequest) -> HttpResponse:
    """The bus's figures in Prometheus' text format."""
    if not _may_scrape(request):
        return HttpResponse(
            "metrics are served to this machine, or with Authorization: Bearer <METRICS_TOKEN>\n",
            status=403,
            content_type="text/plain",
        )
    return HttpResponse(generate_latest(registry), content_type=CONTENT_TYPE_LATEST)
