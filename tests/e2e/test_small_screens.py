"""The frame for keyboards: the skip link; a phone's /dlq/, with its websocket, is tested in test_live.py."""

from __future__ import annotations

import pytest
from playwright.sync_api import Page, expect

from tests.e2e.conftest import BrowserLog, sign_in

pytestmark = pytest.mark.usefixtures("demo_committed")


def test_the_skip_link_is_the_first_stop_of_the_keyboard(page: Page, browser_log: BrowserLog):
    sign_in(page, "auditor")
    page.keyboard.press("Tab")
    skip = page.get_by_role("link", name="Skip to the content")
    expect(skip).to_be_focused()
    expect(skip).to_be_in_viewport()
    skip.press("Enter")
    expect(page.locator("main")).to_be_focused()
    assert browser_log.errors == []
