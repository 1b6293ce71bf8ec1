"""Who may scrape /metrics: with METRICS_TOKEN set only its bearer, loopback too; tokenless loopback when said."""

from typing import Any

import pytest
from django.test import Client

pytestmark = pytest.mark.usefixtures("demo_committed", "bus")

LOOPBACK = {"REMOTE_ADDR": "127.0.0.1"}
LOOPBACK_V6 = {"REMOTE_ADDR": "::1"}
ELSEWHERE = {"REMOTE_ADDR": "203.0.113.9"}


def _status(**extra: Any) -> int:
    return Client().get("/metrics", **extra).status_code


def test_with_a_token_set_a_loopback_peer_without_it_is_refused(settings):
    """A proxy on the same machine makes every visitor loopback: the token, not the address, decides."""
    settings.METRICS_TOKEN = "scrape-me-please"
    settings.METRICS_ALLOW_LOOPBACK = False

    assert _status(**LOOPBACK) == 403
    assert _status(**LOOPBACK_V6) == 403
    assert _status(HTTP_AUTHORIZATION="Bearer wrong", **LOOPBACK) == 403
    assert _status(HTTP_AUTHORIZATION="Bearer scrape-me-please-and-more", **LOOPBACK) == 403
    assert _status(HTTP_AUTHORIZATION="scrape-me-please", **LOOPBACK) == 403
    assert _status(HTTP_AUTHORIZATION="Bearer scrape-me-please", **LOOPBACK) == 200
    assert _status(HTTP_AUTHORIZATION="Bearer scrape-me-please", **ELSEWHERE) == 200


def test_the_token_decides_even_if_loopback_trust_is_also_on(settings):
    """Settings refuse the pair at start (tests/test_production_settings.py); the view holds to the token anyway."""
    settings.METRICS_TOKEN = "scrape-me-please"
    settings.METRICS_ALLOW_LOOPBACK = True

    assert _status(**LOOPBACK) == 403


def test_without_a_token_loopback_is_served_only_when_allowed(settings):
    settings.METRICS_TOKEN = ""
    settings.METRICS_ALLOW_LOOPBACK = False

    refused = Client().get("/metrics", **LOOPBACK)
    assert refused.status_code == 403
    assert b"METRICS_ALLOW_LOOPBACK=1" in refused.content
    assert b"METRICS_TOKEN" in refused.content

    settings.METRICS_ALLOW_LOOPBACK = True
    assert _status(**LOOPBACK) == 200
    assert _status(**LOOPBACK_V6) == 200
    assert _status(**ELSEWHERE) == 403
    assert _status(HTTP_AUTHORIZATION="Bearer ", **ELSEWHERE) == 403  # an empty token is no token


def test_the_token_is_compared_in_constant_time(settings, monkeypatch: pytest.MonkeyPatch):
    """hmac.compare_digest, so the time a wrong guess takes does not tell how much of it was right."""
    import hmac

    compared: list[tuple[bytes, bytes]] = []
    real = hmac.compare_digest

    def spy(a: bytes, b: bytes) -> bool:
        compared.append((a, b))
        return real(a, b)

    monkeypatch.setattr("busapp.views.metrics.hmac.compare_digest", spy)
    settings.METRICS_TOKEN = "scrape-me-please"

    assert _status(HTTP_AUTHORIZATION="Bearer guess", **ELSEWHERE) == 403
    assert compared == [(b"Bearer guess", b"Bearer scrape-me-please")]
