"""Every operation of the live OpenAPI document, fuzzed by schemathesis: no server error, answers as documented.

The document is read from /api/schema/ and the requests go through the WSGI application, as
a bus admin: with a service token, and with a signed-in session (and its CSRF token) for the
operations only people may do. Half the generated ids are swapped for ids that exist, so the
answers about real events and dead letters are checked too, not only the 404s.
"""

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pytest
import schemathesis
from django.contrib.auth.models import User
from django.core.wsgi import get_wsgi_application
from django.test import Client
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from busapp.actions.dead_letters import dead_letter_create
from busapp.actions.publishing import event_publish_batch
from busapp.actions.tokens import service_token_create
from busapp.models import Source, Subscriber, Topic

CHECKS: list[Callable[..., Any]] = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
]
# Operations a service token is always refused: they are fuzzed as a signed-in bus admin.
PERSON_ONLY = {
    ("POST", "/api/topics/"),
    ("POST", "/api/topics/{name}/types/"),
    ("POST", "/api/topics/{name}/types/{event_type}/versions/"),
    ("POST", "/api/topics/{name}/types/{event_type}/versions/{number}/state/"),
    ("POST", "/api/topics/{name}/types/{event_type}/compatibility/"),
    ("POST", "/api/topics/{name}/types/{event_type}/schemas/"),
    ("POST", "/api/dlq/{letter_id}/replay/"),
}
# Any 32 letters make a well-formed CSRF secret; the cookie and the header carry the same one.
CSRF_SECRET = "schemathesis" + "x" * 20


@dataclass(frozen=True)
class AdminCredentials:
    """How the fuzzer signs its requests: a bus admin's service token, and a bus admin's session."""

    token: str
    session: str

    def for_operation(self, method: str, path: str) -> dict[str, Any]:
        """The headers and cookies of one request: the session (with CSRF) where people only may act, else the token."""
        if (method, path) in PERSON_ONLY:
            return {
                "headers": {"X-CSRFToken": CSRF_SECRET},
                "cookies": {"sessionid": self.session, "csrftoken": CSRF_SECRET},
            }
        return {"headers": {"Authorization": f"Bearer {self.token}"}}


@pytest.fixture(autouse=True)
def _node_id_for_schemathesis(request: pytest.FixtureRequest) -> None:
    """Give the test the ``_nodeid`` schemathesis 4.32 reads and relabels: pytest 9 keeps its node id elsewhere."""
    request.node._nodeid = request.node.nodeid


@pytest.fixture
def admin_credentials(demo_committed: None, bus: Any) -> AdminCredentials:
    """A token on every topic (publish and view, and receipts of a subscriber following both) and a session."""
    admin = User.objects.get(username="admin")
    _, token = service_token_create(
        name="schemathesis",
        topics=list(Topic.objects.all()),
        actor=admin,
        subscriber=Subscriber.objects.get(name="withholding-calculator"),
    )
    client = Client()
    client.force_login(admin)
    return AdminCredentials(token=token, session=client.cookies["sessionid"].value)


@pytest.fixture
def api_schema(admin_credentials: AdminCredentials) -> Any:
    """The live OpenAPI document, with history and dead letters for the reads to find, and real ids to ask for."""
    events = event_publish_batch(
        topic="tax-policy",
        items=[{"type": "tax_policy.updated", "payload": {"standard_deduction": amount}} for amount in (1, 2, 3)],
        actor="service:seed",
        source=Source.API,
    ).events
    letters = [
        dead_letter_create(
            topic=Topic.objects.get(name="tax-policy"),
            raw=raw,
            errors=[{"path": "/payload/standard_deduction", "message": "must be 0 or more"}],
            source=Source.CLI,
            actor="cli:seed",
        )
        for raw in ('{"type": "tax_policy.updated", "payload": {"standard_deduction": 5}}', "not json")
    ]
    schema = schemathesis.openapi.from_wsgi(
        "/api/schema/?format=json",
        get_wsgi_application(),
        headers={"Authorization": f"Bearer {admin_credentials.token}"},
    )
    known: dict[str, list[Any]] = {
        "envelope_id": [event.envelope_id for event in events],
        "letter_id": [letter.pk for letter in letters],
        "name": ["tax-policy"],
        "event_type": ["tax_policy.updated"],
        "number": [1],
    }

    @schema.hook("flatmap_path_parameters")
    def half_of_them_real(context: Any, path_parameters: dict[str, Any]) -> Any:
        """The generated path parameters, or the same with the ones that have real values swapped for one of those."""
        if not path_parameters:
            return st.just(path_parameters)
        real = {name: st.sampled_from(values) for name, values in known.items() if name in path_parameters}
        swapped = st.fixed_dictionaries({**{name: st.just(value) for name, value in path_parameters.items()}, **real})
        return st.one_of(st.just(path_parameters), swapped)

    return schema


schema = schemathesis.pytest.from_fixture("api_schema")


@schema.parametrize()
@settings(
    max_examples=15,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow, HealthCheck.filter_too_much],
)
def test_every_operation_answers_as_documented_and_never_with_a_server_error(
    case: Any, admin_credentials: AdminCredentials
) -> None:
    if (case.method, case.path) in PERSON_ONLY and case.headers:
        case.headers.pop("Authorization", None)  # a generated bearer token would be tried (and refused) first
    response = case.call(**admin_credentials.for_operation(case.method, case.path))

    case.validate_response(response, checks=CHECKS)
