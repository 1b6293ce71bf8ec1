"""The API's docs page in headless Chromium: Swagger UI renders the document, and the page's CSP refuses nothing."""

from __future__ import annotations

import pytest
from playwright.sync_api import Page, expect

from tests.e2e.conftest import BrowserLog, sign_in

pytestmark = pytest.mark.usefixtures("demo_committed")


def test_the_api_docs_page_shows_the_operations_with_nothing_refused(page: Page, browser_log: BrowserLog) -> None:
    sign_in(page, "policy")

    page.goto("/api/docs/")

    expect(page.locator(".opblock-summary-path").first).to_be_visible()
    expect(page.get_by_text("/api/topics/{name}/events/batch/", exact=True)).to_be_visible()
    assert page.evaluate("getComputedStyle(document.body).margin") == "0px"  # the page's own style applied
    assert browser_log.errors == []
