"""An admin grants and revokes a publisher's right in headless Chromium, and the publisher feels each change."""

from __future__ import annotations

import pytest
import redis
from django.contrib.auth.models import User
from playwright.sync_api import Browser, BrowserContext, Page, expect

from busapp.actions.access import grant_revoke
from busapp.models import AuditEntry, Event, TopicUserGrant
from tests.e2e.conftest import VIEWPORT, BrowserLog, sign_in

pytestmark = pytest.mark.usefixtures("demo_committed")

TAX_FORM = "/topics/tax-policy/publish/"


def _policy2_without_publish() -> None:
    """Start with policy2 unable to publish on tax-policy (the demo data gives them the right)."""
    grant = TopicUserGrant.objects.get(
        user__username="policy2", content_object__name="tax-policy", permission__codename="publish_topic"
    )
    grant_revoke(grants=[grant], reason="browser test starts without it", actor="cli:test")


def _policy2_signed_in(browser: Browser, url: str) -> tuple[BrowserContext, Page]:
    """A browser of policy2's own, signed in, beside the admin's."""
    context = browser.new_context(base_url=url, viewport=VIEWPORT)
    context.set_default_timeout(10_000)
    publisher = context.new_page()
    sign_in(publisher, "policy2")
    return context, publisher


def _publish_as_policy2(page: Page, amount: int) -> int:
    """Open the tax-policy form as policy2 and publish ``amount``; returns the form page's status."""
    response = page.goto(TAX_FORM)
    assert response is not None
    if response.status != 200:
        return response.status
    page.locator('[name="/payload/standard_deduction"]').fill(str(amount))
    page.get_by_role("button", name="Preview").click()
    page.locator("#confirm").click()
    expect(page.locator("h1")).to_have_text("Published")
    return 200


def test_admin_grants_policy2_publish_with_a_reason_then_revokes_it(
    page: Page, browser: Browser, browser_log: BrowserLog, live_server, bus: redis.Redis
) -> None:
    _policy2_without_publish()
    publisher_context, publisher = _policy2_signed_in(browser, live_server.url)
    assert _publish_as_policy2(publisher, 15000) == 403

    sign_in(page, "admin")
    page.get_by_role("navigation", name="Main").get_by_role("link", name="Access").click()
    expect(page.locator("h1")).to_have_text("Access")
    grant_form = page.locator("#grant-form")
    grant_form.get_by_label("To", exact=True).select_option(label="policy2")
    grant_form.get_by_label("tax-policy", exact=True).check()
    grant_form.get_by_label("publish", exact=True).check()
    grant_form.get_by_label("Reason", exact=True).fill("covers for policy during the filing season")
    grant_form.get_by_role("button", name="Grant").click()
    expect(page.locator(".message.success")).to_contain_text("Granted publish on tax-policy to policy2 (person)")
    policy2_on_tax_policy = page.locator('tr[data-principal="user:policy2"] td[data-topic="tax-policy"]')
    expect(policy2_on_tax_policy.locator('.chip.grant[data-right="publish_topic"]')).to_have_count(1)

    assert _publish_as_policy2(publisher, 15000) == 200
    assert Event.objects.filter(publisher_name="policy2", payload={"standard_deduction": 15000}).count() == 1

    grants = page.locator("#grants")
    grants.get_by_role("row").filter(has_text="covers for policy during the filing season").get_by_role(
        "checkbox"
    ).check()
    page.get_by_label("Why revoke the ticked grants").fill("filing season over")
    page.get_by_role("button", name="Revoke ticked").click()
    expect(page.locator(".message.success")).to_contain_text("Revoked 1 grant")
    expect(policy2_on_tax_policy.locator('.chip.grant[data-right="publish_topic"]')).to_have_count(0)

    assert _publish_as_policy2(publisher, 16000) == 403
    assert not Event.objects.filter(payload={"standard_deduction": 16000}).exists()
    admin = User.objects.get(username="admin")
    trail = list(
        AuditEntry.objects.filter(actor=admin, action__startswith="access.")
        .order_by("seq")
        .values_list("action", flat=True)
    )
    assert trail == ["access.grant", "access.revoke"]
    refused = AuditEntry.objects.filter(actor_name="policy2", action="publish.refused")
    assert refused.count() == 2
    publisher_context.close()
    assert browser_log.errors == []


def test_a_chip_revokes_its_one_grant_after_a_page_that_names_what_goes(
    page: Page, browser: Browser, browser_log: BrowserLog, live_server, bus: redis.Redis
) -> None:
    grant = TopicUserGrant.objects.get(
        user__username="policy2", content_object__name="tax-policy", permission__codename="publish_topic"
    )
    publisher_context, publisher = _policy2_signed_in(browser, live_server.url)
    assert _publish_as_policy2(publisher, 15000) == 200

    sign_in(page, "admin")
    page.goto("/access/")
    cell = page.locator('tr[data-principal="user:policy2"] td[data-topic="tax-policy"]')
    cell.get_by_role("link", name="revoke publish on tax-policy from policy2 (person)").click()

    expect(page.locator("h1")).to_have_text("Revoke 1 grant?")
    revoking = page.locator("#revoking tbody tr")
    expect(revoking).to_have_count(1)
    expect(revoking).to_contain_text("policy2 (person)")
    expect(revoking).to_contain_text("tax-policy")
    expect(revoking.locator("td").nth(2)).to_have_text("publish")
    page.get_by_role("button", name="Yes, revoke it").click()  # no reason yet: the browser asks for one
    expect(page.locator("h1")).to_have_text("Revoke 1 grant?")
    page.get_by_label("Why (kept in the audit log)").fill("moved to the withholding team")
    page.get_by_role("button", name="Yes, revoke it").click()

    expect(page.locator(".message.success")).to_contain_text("Revoked 1 grant")
    expect(cell.locator('.chip.grant[data-right="publish_topic"]')).to_have_count(0)
    expect(cell.locator('.chip[data-right="view_topic"]')).to_have_count(1)  # only what the page named went
    assert not TopicUserGrant.objects.filter(pk=grant.pk).exists()
    entry = AuditEntry.objects.get(action="access.revoke")
    assert entry.details["reason"] == "moved to the withholding team"
    assert _publish_as_policy2(publisher, 16000) == 403
    publisher_context.close()
    assert browser_log.errors == []
