"""The websockets' doors: a socket ends with its session or password, and only the page's own origin may open one."""

import datetime as dt
import json

import pytest
from asgiref.sync import sync_to_async
from channels.testing.websocket import WebsocketCommunicator
from django.contrib.auth.models import User
from django.contrib.sessions.models import Session
from django.test import Client
from django.utils import timezone

from busapp.consumers import CLOSE_NOT_SIGNED_IN
from busapp.errors import FieldError
from busapp.models import BulkActionKind, Source, Topic
from hmsadmin.asgi import application

pytestmark = pytest.mark.usefixtures("demo_committed", "bus")

HOST = (b"host", b"testserver")
SAME_ORIGIN = (b"origin", b"http://testserver")
# Rights are read again every 2 s, shared for at most 1 s more: a close comes within 3 s.
CLOSE_WITHIN = 8


def _session_of(username: str) -> tuple[Client, str]:
    """A browser of the person, signed in, and its session key."""
    client = Client()
    client.force_login(User.objects.get(username=username))
    return client, client.cookies["sessionid"].value


async def _open(path: str, session_key: str, headers: tuple[tuple[bytes, bytes], ...] = (HOST, SAME_ORIGIN)):
    communicator = WebsocketCommunicator(
        application, path, headers=[*headers, (b"cookie", f"sessionid={session_key}".encode())]
    )
    connected, _ = await communicator.connect(timeout=5)
    return communicator, connected


async def _closed_with(communicator: WebsocketCommunicator) -> int | None:
    """The close code the socket was closed with (other frames before it are skipped)."""
    while True:
        message = await communicator.receive_output(timeout=CLOSE_WITHIN)
        if message["type"] == "websocket.close":
            return message.get("code")


async def _feed(path: str = "/ws/traffic/", username: str = "policy") -> tuple[WebsocketCommunicator, Client, str]:
    client, key = await sync_to_async(_session_of)(username)
    communicator, connected = await _open(path, key)
    assert connected
    await communicator.send_json_to({"action": "subscribe", "topics": ["tax-policy"]})
    assert await communicator.receive_json_from(timeout=5) == {"type": "subscribed", "topics": ["tax-policy"]}
    return communicator, client, key


# A socket ends with its session -----------------------------------------------------------------------------------


@pytest.mark.parametrize("path", ["/ws/traffic/", "/ws/dlq/"])
async def test_signing_out_closes_the_open_socket_of_that_session(path: str):
    communicator, browser, _ = await _feed(path)
    other, _, _ = await _feed(path)  # the same person in another browser stays signed in

    response = await sync_to_async(browser.post)("/accounts/logout/")
    assert response.status_code == 302

    assert await _closed_with(communicator) == CLOSE_NOT_SIGNED_IN
    assert await other.receive_nothing(timeout=1)
    await communicator.disconnect()
    await other.disconnect()


async def test_a_deleted_session_closes_its_socket():
    communicator, _, key = await _feed()

    await sync_to_async(Session.objects.filter(session_key=key).delete)()

    assert await _closed_with(communicator) == CLOSE_NOT_SIGNED_IN
    await communicator.disconnect()


async def test_an_expired_session_closes_its_socket():
    communicator, _, key = await _feed()

    await sync_to_async(Session.objects.filter(session_key=key).update)(
        expire_date=timezone.now() - dt.timedelta(seconds=1)
    )

    assert await _closed_with(communicator) == CLOSE_NOT_SIGNED_IN
    await communicator.disconnect()


async def test_a_password_change_closes_the_sockets_of_the_sessions_signed_in_with_the_old_one():
    """Django signs them out at their next page (the session changing it gets a new key, hence a new socket)."""
    first, _, _ = await _feed()
    second, _, _ = await _feed()
    someone_else, _, _ = await _feed(username="auditor")

    def change_password() -> None:
        user = User.objects.get(username="policy")
        user.set_password("a-new-password-41")
        user.save()

    await sync_to_async(change_password)()

    assert await _closed_with(first) == CLOSE_NOT_SIGNED_IN
    assert await _closed_with(second) == CLOSE_NOT_SIGNED_IN
    assert await someone_else.receive_nothing(timeout=1)
    for communicator in (first, second, someone_else):
        await communicator.disconnect()


async def test_a_socket_whose_session_still_holds_stays_open():
    communicator, _, _ = await _feed()

    assert await communicator.receive_nothing(timeout=4.5)  # two rights re-reads later
    await communicator.send_json_to({"action": "subscribe", "topics": []})
    assert await communicator.receive_json_from(timeout=5) == {"type": "subscribed", "topics": ["tax-policy"]}
    await communicator.disconnect()


def _bulk_action() -> int:
    """A running bulk discard of one dead letter on tax-policy, started by the admin."""
    from busapp.actions.dead_letters import bulk_action_start, dead_letter_create

    topic = Topic.objects.get(name="tax-policy")
    error: list[FieldError] = [{"path": "/payload/x", "message": "refused"}]
    letter = dead_letter_create(topic=topic, raw="not json", errors=error, source=Source.EXTERNAL, actor="external")
    action = bulk_action_start(
        topic=topic,
        kind=BulkActionKind.DISCARD,
        letter_ids=[letter.pk],
        actor=User.objects.get(username="admin"),
        rate_per_second=1,
        reason="a test of the progress socket",
    )
    return action.pk


async def test_signing_out_closes_a_bulk_progress_socket():
    action_id = await sync_to_async(_bulk_action)()
    browser, key = await sync_to_async(_session_of)("auditor")
    communicator, connected = await _open(f"/ws/dlq/bulk/{action_id}/", key)
    assert connected
    assert (await communicator.receive_json_from(timeout=5))["type"] == "progress"

    await sync_to_async(browser.post)("/accounts/logout/")

    assert await _closed_with(communicator) == CLOSE_NOT_SIGNED_IN
    await communicator.disconnect()


# Only the page's own origin ---------------------------------------------------------------------------------------


async def _connects(*headers: tuple[bytes, bytes], path: str = "/ws/traffic/", scheme: str = "ws") -> bool:
    _, key = await sync_to_async(_session_of)("policy")
    communicator = WebsocketCommunicator(
        application, path, headers=[*headers, (b"cookie", f"sessionid={key}".encode())]
    )
    communicator.scope["scheme"] = scheme
    connected, _ = await communicator.connect(timeout=5)
    await communicator.disconnect()
    return connected


async def test_another_port_on_the_same_host_is_refused():
    assert not await _connects((b"host", b"localhost:8000"), (b"origin", b"http://localhost:9999"))
    assert await _connects((b"host", b"localhost:8000"), (b"origin", b"http://localhost:8000"))


async def test_an_https_origin_is_refused_by_a_plain_http_server_and_the_other_way_round():
    assert not await _connects((b"host", b"localhost:8000"), (b"origin", b"https://localhost:8000"))
    assert await _connects((b"host", b"localhost:8000"), (b"origin", b"https://localhost:8000"), scheme="wss")
    assert not await _connects((b"host", b"localhost:8000"), (b"origin", b"http://localhost:8000"), scheme="wss")


async def test_an_origin_without_a_port_is_not_the_page_on_port_8000():
    assert not await _connects((b"host", b"localhost:8000"), (b"origin", b"http://localhost"))


async def test_a_handshake_without_origin_or_with_a_host_the_site_does_not_serve_is_refused():
    assert not await _connects((b"host", b"localhost:8000"))
    assert not await _connects((b"host", b"evil.example"), (b"origin", b"http://evil.example"))


async def test_an_origin_listed_in_csrf_trusted_origins_is_accepted(settings):
    settings.CSRF_TRUSTED_ORIGINS = ["https://bus.example.gov", "https://*.agency.example.gov"]
    host = (b"host", b"localhost:8000")

    assert await _connects(host, (b"origin", b"https://bus.example.gov"))
    assert await _connects(host, (b"origin", b"https://desk.agency.example.gov"))
    assert not await _connects(host, (b"origin", b"http://bus.example.gov"))  # the listed scheme only
    assert not await _connects(host, (b"origin", b"https://bus.example.gov:8443"))  # the listed port only
    assert not await _connects(host, (b"origin", b"https://bus.example.gov.evil.example"))


async def test_behind_a_tls_proxy_the_forwarded_scheme_is_the_page_scheme(settings):
    settings.SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
    proxied = (b"x-forwarded-proto", b"https")

    assert await _connects((b"host", b"localhost"), proxied, (b"origin", b"https://localhost"))
    assert not await _connects((b"host", b"localhost"), proxied, (b"origin", b"http://localhost"))


# The CSRF check of a POST reads the origin the same way -----------------------------------------------------------


@pytest.mark.parametrize(
    ("origin", "secure", "accepted"),
    [
        ("http://localhost:8000", False, True),
        ("http://localhost:9999", False, False),
        ("https://localhost:8000", False, False),
        ("http://localhost", False, False),
        ("https://localhost:8000", True, True),
        ("http://localhost:8000", True, False),
        ("https://bus.example.gov", False, True),
        ("http://bus.example.gov", False, False),
    ],
)
def test_a_post_is_refused_unless_its_origin_is_the_pages_own_or_trusted(settings, origin, secure, accepted):
    settings.CSRF_TRUSTED_ORIGINS = ["https://bus.example.gov"]
    browser = Client(enforce_csrf_checks=True)
    browser.force_login(User.objects.get(username="policy"))
    browser.get("/", HTTP_HOST="localhost:8000")  # sets the CSRF cookie
    token = browser.cookies["csrftoken"].value

    response = browser.post(
        "/accounts/logout/",
        {"csrfmiddlewaretoken": token},
        HTTP_HOST="localhost:8000",
        HTTP_ORIGIN=origin,
        secure=secure,
    )

    assert (response.status_code != 403) is accepted, json.dumps([origin, secure, response.status_code])
