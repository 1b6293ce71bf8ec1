"""axe-core on every main page, as each role sees it: no critical and no serious violation."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import redis
from playwright.sync_api import Page

from tests.e2e.conftest import sign_in
from tests.support import comma_number_letter, publish_deduction, withholding_request

pytestmark = pytest.mark.usefixtures("demo_committed")

AXE = Path(__file__).parent / "vendor" / "axe.min.js"
BLOCKING = ("critical", "serious")


def _violations(page: Page) -> list[str]:
    """The critical and serious violations axe finds on the page, each as 'rule (impact): where'."""
    result = page.evaluate("async () => await axe.run(document, {resultTypes: ['violations']})")
    return [
        f"{violation['id']} ({violation['impact']}): {', '.join(node['target'][0] for node in violation['nodes'][:3])}"
        for violation in result["violations"]
        if violation["impact"] in BLOCKING
    ]


def _world() -> dict[str, str]:
    """An event, a dead letter and a waiting request, so every page has rows: the addresses of their pages."""
    from django.contrib.auth.models import User

    event = publish_deduction(15000)
    letter = comma_number_letter()
    waiting = withholding_request(User.objects.get(username="policy"))
    return {
        "event": f"/events/{event.envelope_id}/",
        "letter": f"/dlq/{letter.pk}/",
        "request": waiting.get_absolute_url(),
    }


PAGES = {
    "policy": [
        "/",
        "/topics/",
        "/topics/tax-policy/",
        "/topics/tax-policy/publish/",
        "/topics/irs.withholding/publish/",
        "/requests/",
        "{request}",
    ],
    "auditor": ["/events/", "/events/?where=standard_deduction+%3E%3D+1", "{event}", "/audit/", "/dlq/", "/live/"],
    "admin": [
        "{letter}",
        "/access/",
        "/access/tokens/",
        "/no-such-page/",
        "/topics/new/",
        "/topics/tax-policy/",
        "/topics/tax-policy/edit/",
        "/topics/tax-policy/types/tax_policy.updated/versions/new/",
    ],
}


def test_the_main_pages_have_no_critical_or_serious_accessibility_violations(page: Page, bus: redis.Redis):
    addresses = _world()
    page.context.add_init_script(path=str(AXE))  # on every document, before its scripts; the page's CSP stays on
    found: dict[str, list[str]] = {}
    for username, paths in PAGES.items():
        page.context.clear_cookies()
        sign_in(page, username)
        for path in paths:
            address = path.format(**addresses)
            page.goto(address)
            violations = _violations(page)
            if violations:
                found[f"{username} {address}"] = violations
    assert found == {}, json.dumps(found, indent=2)
