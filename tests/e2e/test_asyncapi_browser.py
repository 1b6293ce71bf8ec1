"""The AsyncAPI page in headless Chromium: the React component renders the topics, and no CSP refuses anything."""

from __future__ import annotations

import re

import pytest
from playwright.sync_api import Error as PlaywrightError
from playwright.sync_api import Page, expect

from tests.e2e.conftest import BrowserLog, sign_in

pytestmark = pytest.mark.usefixtures("demo_committed")

# Recorded in every document of the page, the sandboxed frame's included, before its scripts run.
CSP_WATCH = """
document.addEventListener("securitypolicyviolation", (event) => {
  console.error(`CSP refused ${event.violatedDirective}: ${event.blockedURI || event.sample}`);
});
"""


def test_the_asyncapi_page_renders_the_topics_with_nothing_refused(page: Page, browser_log: BrowserLog) -> None:
    page.add_init_script(CSP_WATCH)
    sign_in(page, "policy")

    page.goto("/api/asyncapi/")

    frame = page.frame_locator("#asyncapi-viewer iframe")
    expect(frame.locator("h1")).to_contain_text("HMS Synchronization Event Bus")
    for topic, event_type in (("tax-policy", "tax_policy.updated"), ("irs.withholding", "withholding_table.published")):
        operation = frame.locator(f"[id='operation-receive-{topic}.receive']")
        expect(operation).to_be_visible()
        expect(operation).to_contain_text(topic)
        expect(operation).to_contain_text(event_type)
    expect(page.locator("#asyncapi-status")).to_have_text("2 topics shown.")
    assert browser_log.errors == []


def test_the_renderer_frame_is_sandboxed_and_only_it_may_evaluate_code(page: Page, browser_log: BrowserLog) -> None:
    sign_in(page, "policy")

    answer = page.goto("/api/asyncapi/")
    assert answer is not None
    page_policy = answer.headers["content-security-policy"]
    assert "unsafe-eval" not in page_policy
    assert "unsafe-inline" not in page_policy
    frame_answer = page.request.get("/api/asyncapi/frame/")
    frame_policy = frame_answer.headers["content-security-policy"]
    assert "sandbox allow-scripts" in frame_policy
    assert "connect-src 'none'" in frame_policy
    assert "unsafe-inline" not in frame_policy
    assert page.locator("#asyncapi-viewer iframe").get_attribute("sandbox") == "allow-scripts"
    # The frame's document has an opaque origin: it cannot read this page, the API or the session.
    frame = page.frame_locator("#asyncapi-viewer iframe")
    expect(frame.locator("[id='operation-receive-tax-policy.receive']")).to_be_visible()
    child = page.frames[1]
    assert child.evaluate("window.origin") == "null"
    with pytest.raises(PlaywrightError, match="SecurityError"):  # no session cookie to read
        child.evaluate("document.cookie")
    assert browser_log.errors == []


def test_a_topic_page_links_to_its_place_in_the_asyncapi_page(page: Page, browser_log: BrowserLog) -> None:
    sign_in(page, "policy")
    page.goto("/topics/tax-policy/")

    page.get_by_role("link", name="AsyncAPI").click()

    expect(page).to_have_url(re.compile(r"/api/asyncapi/#tax-policy$"))
    operation = page.frame_locator("#asyncapi-viewer iframe").locator("[id='operation-receive-tax-policy.receive']")
    expect(operation).to_be_in_viewport()
    assert browser_log.errors == []
