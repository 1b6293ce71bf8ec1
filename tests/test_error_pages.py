"""The product's own error pages: the frame and a way on, never Django's bare 'Not Found'."""

from __future__ import annotations

import pytest
from django.test import Client, RequestFactory
from django.views.defaults import server_error

from tests.support import signed_in

pytestmark = pytest.mark.usefixtures("demo")


def test_a_missing_page_is_the_products_404_with_the_navigation_and_ways_on() -> None:
    response = signed_in("auditor").get("/events/no-such-event/")

    page = response.content.decode()
    assert response.status_code == 404
    assert '<nav aria-label="Main" id="main-nav">' in page
    assert "There is no page at <code>/events/no-such-event/</code>" in page
    assert 'href="/events/"' in page


def test_a_missing_page_for_someone_signed_out_still_has_its_ways_on() -> None:
    response = Client().get("/no-such-page/")

    assert response.status_code == 404
    assert "Page not found" in response.content.decode()


def test_a_server_error_page_renders_without_any_request_context_and_says_what_to_do(settings) -> None:
    """It must not fail itself: no static manifest lookup (production's storage raises on a missing entry)."""
    settings.STORAGES = {
        **settings.STORAGES,
        "staticfiles": {"BACKEND": "django.contrib.staticfiles.storage.ManifestStaticFilesStorage"},
    }
    response = server_error(RequestFactory().get("/events/"))

    page = response.content.decode()
    assert response.status_code == 500
    assert "Something went wrong on our side" in page
    assert "Nothing you sent was lost or half-written" in page
    assert 'href="/"' in page
