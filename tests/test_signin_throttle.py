"""Sign-in throttled per account and per address (django-axes), with a page saying when to try again; audited."""

from __future__ import annotations

import datetime as dt

import pytest
import time_machine
from axes.exceptions import AxesBackendRequestParameterRequired
from django.conf import settings
from django.http import HttpRequest
from django.test import Client
from django.utils import timezone

from busapp.models import AuditEntry
from tests.conftest import DEMO_PASSWORD

pytestmark = pytest.mark.usefixtures("demo", "bus")
MOMENT = dt.datetime(2026, 12, 5, 9, 30, tzinfo=dt.UTC)


def _sign_in(client: Client, username: str, password: str, *, address: str, path: str = "/accounts/login/"):
    return client.post(path, {"username": username, "password": password}, REMOTE_ADDR=address)


def _signed_in(client: Client) -> bool:
    return "_auth_user_id" in client.session


def _lock_policy(address: str = "192.0.2.10") -> None:
    """As many wrong passwords for policy as the limit allows, from one address."""
    for attempt in range(settings.AXES_FAILURE_LIMIT):
        _sign_in(Client(), "policy", f"guess-{attempt}", address=address)


@time_machine.travel(MOMENT, tick=False)
def test_forty_wrong_passwords_for_one_account_lock_it_with_a_page_saying_when_to_try_again() -> None:
    """Each guess from another address: the account is what is locked, even against its right password."""
    limit = settings.AXES_FAILURE_LIMIT
    assert settings.AXES_ENABLED
    client = Client()

    answers = [_sign_in(client, "policy", f"guess-{n}", address=f"10.1.{n}.7") for n in range(40)]
    right_password = _sign_in(client, "policy", DEMO_PASSWORD, address="10.9.9.9")

    assert [answer.status_code for answer in answers[: limit - 1]] == [200] * (limit - 1)  # "did not match"
    assert [answer.status_code for answer in answers[limit - 1 :]] == [429] * (40 - limit + 1)
    assert right_password.status_code == 429
    assert not _signed_in(client)
    [entry] = AuditEntry.objects.filter(action="signin.lockout")  # once, when it began
    assert (entry.actor_name, entry.target) == ("system:signin-throttle", "user:policy")
    assert entry.details["account_failures"] == limit
    assert entry.details["path"] == "/accounts/login/"
    page = right_password.content.decode()
    retry_at = MOMENT + settings.AXES_COOLOFF_TIME  # the clock stood still: every attempt was at MOMENT
    minutes = int(settings.AXES_COOLOFF_TIME.total_seconds() // 60)
    assert "Too many failed sign-ins for this account or from this address" in page
    assert f"Try again after {retry_at:%Y-%m-%d %H:%M} UTC (in {minutes} minutes)" in page
    assert entry.details["until"] == retry_at.isoformat()
    assert right_password["Retry-After"] == str(int(settings.AXES_COOLOFF_TIME.total_seconds()))
    # Someone else signs in from one of those addresses.
    other = Client()
    assert _sign_in(other, "policy2", DEMO_PASSWORD, address="10.1.3.7").status_code == 302
    assert _signed_in(other)


def test_wrong_passwords_from_one_address_across_accounts_lock_that_address_on_the_admin_sign_in_too() -> None:
    """One guess per account from one address: the address is locked, for every account; elsewhere sign-in works."""
    limit = settings.AXES_FAILURE_LIMIT
    address = "203.0.113.5"

    answers = [_sign_in(Client(), f"someone{n}", "guess", address=address, path="/admin/login/") for n in range(limit)]
    admin_there, admin_elsewhere = Client(), Client()
    from_there = _sign_in(admin_there, "admin", DEMO_PASSWORD, address=address, path="/admin/login/")
    from_elsewhere = _sign_in(admin_elsewhere, "admin", DEMO_PASSWORD, address="203.0.113.6", path="/admin/login/")

    assert [answer.status_code for answer in answers] == [200] * (limit - 1) + [429]
    assert from_there.status_code == 429
    assert "Try again after" in from_there.content.decode()
    assert not _signed_in(admin_there)
    assert from_elsewhere.status_code == 302
    assert _signed_in(admin_elsewhere)
    [entry] = AuditEntry.objects.filter(action="signin.lockout")
    assert (entry.details["address"], entry.details["address_failures"]) == (address, limit)
    assert entry.details["path"] == "/admin/login/"


def test_after_the_cool_off_the_right_password_works_again() -> None:
    """A minute before the time the page gives, still refused; after it, signed in."""
    _lock_policy()
    locked_at = timezone.now()

    with time_machine.travel(locked_at + settings.AXES_COOLOFF_TIME - dt.timedelta(minutes=1), tick=False):
        early = Client()
        assert _sign_in(early, "policy", DEMO_PASSWORD, address="192.0.2.10").status_code == 429
    # That refused attempt started the wait again.
    with time_machine.travel(locked_at + 2 * settings.AXES_COOLOFF_TIME + dt.timedelta(seconds=1), tick=False):
        later = Client()
        assert _sign_in(later, "policy", DEMO_PASSWORD, address="192.0.2.10").status_code == 302
        assert _signed_in(later)


def test_a_test_signs_in_with_force_login_or_with_the_request_passed() -> None:
    """The suite's thousands of force_login calls never meet the throttle; client.login needs the request axes reads."""
    client = Client()
    with pytest.raises(AxesBackendRequestParameterRequired):
        client.login(username="policy", password=DEMO_PASSWORD)

    assert client.login(request=HttpRequest(), username="policy", password=DEMO_PASSWORD)
    assert client.get("/").status_code == 200
