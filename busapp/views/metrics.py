"""``/metrics`` for Prometheus: to a scraper with the token, or, only where the operator says so, to this machine."""

from __future__ import annotations

import hmac

from django.conf import settings
from django.http import HttpRequest, HttpResponse
from django.views.decorators.http import require_GET
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from busapp.metrics import registry

LOCAL_ADDRESSES = {"127.0.0.1", "::1"}


def _may_scrape(request: HttpRequest) -> bool:
    """With ``METRICS_TOKEN`` set, only ``Authorization: Bearer <token>``, from anywhere (loopback too).

    A peer address proves little (behind a proxy on the same machine, everyone is loopback), so
    a tokenless loopback peer is trusted only with ``METRICS_ALLOW_LOOPBACK`` (on by default
    only with DEBUG and no token: hmsadmin/settings.py).
    """
    token = settings.METRICS_TOKEN
    if token:
        presented = request.headers.get("Authorization", "")
        return hmac.compare_digest(presented.encode(), f"Bearer {token}".encode())
    return settings.METRICS_ALLOW_LOOPBACK and request.META.get("REMOTE_ADDR") in LOCAL_ADDRESSES


@require_GET
def metrics(request: HttpRequest) -> HttpResponse:
    """The bus's figures in Prometheus' text format."""
    if not _may_scrape(request):
        return HttpResponse(
            "metrics are served with Authorization: Bearer <METRICS_TOKEN> (set METRICS_TOKEN), or to this"
            " machine without a token when METRICS_ALLOW_LOOPBACK=1 and no METRICS_TOKEN is set\n",
            status=403,
            content_type="text/plain",
        )
    return HttpResponse(generate_latest(registry), content_type=CONTENT_TYPE_LATEST)
