"""The publish form page for a 50-field schema: server time with the cached layout, and without it.

Run: ``.venv/bin/python bench/forms.py`` (SQLite in a temporary folder). It starts its own
redis-server on a free port, uses production settings (``DEBUG=0``, static files collected
into a temporary ``VAR_DIR``), loads the demo data, then creates the topic ``bench.forms``
and the event type ``bench_form.submitted`` with a 50-field JSON Schema through the actions
(audited as any other change).

Measured with Django's test Client, signed in as the demo Bus admin ``admin``:
- warm: GET /topics/bench.forms/publish/?type=bench_form.submitted as production runs it
  (the form layout built once per schema version, the template loaded once);
- uncached (the baseline): the same GET with the layout cache emptied before every request,
  i.e. the schema turned into a form on every request;
- preview: POST of the form filled with valid values (every field, two rows in each array),
  which reads the inputs back into a payload, validates it and shows the preview;
- preview, uncached: the same POST with the layout and the compiled validator forgotten first.
``--profile N`` also profiles N warm GETs with cProfile and prints where the time goes.
"""

from __future__ import annotations

import argparse
import cProfile
import io
import os
import platform
import pstats
import re
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.support import RedisServer  # noqa: E402

TOPIC = "bench.forms"
EVENT_TYPE = "bench_form.submitted"
PAGE = f"/topics/{TOPIC}/publish/"
AIM_MS = 50.0
LEAF_FIELDS = 50

_STATES = ["AL", "AZ", "CA", "CO", "FL", "GA", "IL", "MA", "MD", "MI", "NC", "NJ", "NY", "OH", "PA", "TX", "VA", "WA"]
_AMOUNT = {"type": "number", "minimum": 0, "maximum": 100_000_000, "multipleOf": 0.01}


def _arguments() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--database-url", help="default: SQLite in a temporary folder")
    parser.add_argument("--requests", type=int, default=300, help="requests per measured path")
    parser.add_argument("--profile", type=int, default=0, metavar="N", help="also profile N warm GETs (cProfile)")
    return parser.parse_args()


def bench_schema() -> dict[str, Any]:
    """A realistic 50-field Draft 2020-12 schema: an amended return as a tax office's form would submit it.

    Leaves (inputs): 26 at the top level, 6 in ``taxpayer``, 5 in ``taxpayer.address``, 4 in
    ``bank_account``, 1 in the ``tags`` rows (strings), 4 in the ``income_items`` rows (objects), and
    4 more at the top level after them: 50.
    """
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "title": "Amended return submitted",
        "description": "An amended individual return as received by the intake office.",
        "type": "object",
        "additionalProperties": False,
        "required": ["case_id", "tax_year", "filing_status", "submitted_at", "taxpayer", "income_items"],
        "properties": {
            "case_id": {
                "type": "string",
                "title": "Case ID",
                "description": "Two letters, a dash and six digits.",
                "pattern": "^[A-Z]{2}-[0-9]{6}$",
                "minLength": 9,
                "maxLength": 9,
            },
            "tax_year": {"type": "integer", "minimum": 2000, "maximum": 2100, "default": 2026},
            "filing_status": {
                "type": "string",
                "enum": ["single", "married_joint", "married_separate", "head_of_household", "qualifying_surviving"],
            },
            "submitted_at": {"type": "string", "format": "date-time", "title": "Submitted at"},
            "effective_date": {"type": "string", "format": "date"},
            "contact_email": {"type": "string", "format": "email", "maxLength": 254},
            "reference_url": {"type": "string", "format": "uri", "description": "Where the case file lives."},
            "amended": {"type": "boolean", "default": True},
            "return_version": {"type": "integer", "minimum": 1, "maximum": 99, "default": 1},
            "gross_income": {**_AMOUNT, "description": "In US dollars."},
            "adjusted_gross_income": _AMOUNT,
            "taxable_income": _AMOUNT,
            "total_tax": _AMOUNT,
            "withholding_total": _AMOUNT,
            "estimated_payments": _AMOUNT,
            "refund_amount": _AMOUNT,
            "penalty_amount": {"type": "number", "minimum": 0, "maximum": 1_000_000, "multipleOf": 0.01},
            "interest_rate": {"type": "number", "minimum": 0, "maximum": 1, "multipleOf": 0.0001},
            "dependents_count": {"type": "integer", "minimum": 0, "maximum": 20, "default": 0},
            "exemptions": {"type": "integer", "minimum": 0, "maximum": 20, "multipleOf": 1},
            "state_code": {"type": "string", "enum": _STATES, "title": "State"},
            "received_channel": {"type": "string", "enum": ["efile", "paper", "walk_in", "phone"]},
            "electronic_filing": {"type": "boolean", "default": True},
            "direct_deposit": {"type": "boolean"},
            "preparer_ptin": {"type": "string", "title": "Preparer PTIN", "pattern": "^P[0-9]{8}$"},
            "notes": {"type": "string", "maxLength": 500, "description": "Anything the reviewer should know."},
            "taxpayer": {
                "type": "object",
                "description": "The person the return belongs to.",
                "required": ["first_name", "last_name", "ssn_last4"],
                "properties": {
                    "first_name": {"type": "string", "minLength": 1, "maxLength": 50},
                    "last_name": {"type": "string", "minLength": 1, "maxLength": 50},
                    "ssn_last4": {"type": "string", "title": "SSN (last 4)", "pattern": "^[0-9]{4}$"},
                    "birth_date": {"type": "string", "format": "date"},
                    "occupation": {"type": "string", "maxLength": 80},
                    "phone": {"type": "string", "pattern": "^\\+?[0-9 ()-]{7,20}$"},
                    "address": {
                        "type": "object",
                        "required": ["street", "city", "state", "postal_code"],
                        "properties": {
                            "street": {"type": "string", "minLength": 1, "maxLength": 120},
                            "city": {"type": "string", "minLength": 1, "maxLength": 80},
                            "state": {"type": "string", "enum": _STATES},
                            "postal_code": {"type": "string", "pattern": "^[0-9]{5}(-[0-9]{4})?$"},
                            "country": {"type": "string", "enum": ["US", "CA", "MX"], "default": "US"},
                        },
                    },
                },
            },
            "bank_account": {
                "type": "object",
                "description": "For a direct deposit of the refund.",
                "properties": {
                    "routing_number": {"type": "string", "pattern": "^[0-9]{9}$"},
                    "account_number": {"type": "string", "pattern": "^[0-9]{4,17}$"},
                    "account_type": {"type": "string", "enum": ["checking", "savings"]},
                    "verified": {"type": "boolean"},
                },
            },
            "tags": {
                "type": "array",
                "description": "Reviewer's labels.",
                "maxItems": 10,
                "items": {"type": "string", "minLength": 1, "maxLength": 30},
            },
            "income_items": {
                "type": "array",
                "minItems": 1,
                "maxItems": 50,
                "items": {
                    "type": "object",
                    "required": ["source", "amount"],
                    "properties": {
                        "source": {"type": "string", "enum": ["wages", "interest", "dividends", "business", "other"]},
                        "payer_name": {"type": "string", "maxLength": 100},
                        "amount": _AMOUNT,
                        "received_on": {"type": "string", "format": "date"},
                    },
                },
            },
            "signature_date": {"type": "string", "format": "date"},
            "last_modified": {"type": "string", "format": "date-time"},
            "audit_selected": {"type": "boolean"},
            "reviewer_email": {"type": "string", "format": "email"},
        },
    }


def bench_payload() -> dict[str, Any]:
    """A valid payload filling every field, two rows in each array.

    1234.56 is among the amounts: a cent amount binary floating point cannot divide by 0.01,
    which validation once refused (bench/README.md).
    """
    return {
        "case_id": "AM-204518",
        "tax_year": 2025,
        "filing_status": "married_joint",
        "submitted_at": "2026-11-27T14:30:00Z",
        "effective_date": "2026-12-01",
        "contact_email": "j.rivera@example.org",
        "reference_url": "https://cases.example.gov/AM-204518",
        "amended": True,
        "return_version": 2,
        "gross_income": 98450.25,
        "adjusted_gross_income": 91200.5,
        "taxable_income": 62000,
        "total_tax": 1234.56,
        "withholding_total": 8200,
        "estimated_payments": 500.5,
        "refund_amount": 1569.75,
        "penalty_amount": 0,
        "interest_rate": 0.25,
        "dependents_count": 2,
        "exemptions": 4,
        "state_code": "MD",
        "received_channel": "efile",
        "electronic_filing": True,
        "direct_deposit": True,
        "preparer_ptin": "P01234567",
        "notes": "Corrected wages after a late W-2.",
        "taxpayer": {
            "first_name": "Jordan",
            "last_name": "Rivera",
            "ssn_last4": "6789",
            "birth_date": "1984-03-09",
            "occupation": "Nurse",
            "phone": "+1 (410) 555-0142",
            "address": {
                "street": "12 Harbor Lane",
                "city": "Annapolis",
                "state": "MD",
                "postal_code": "21401-1234",
                "country": "US",
            },
        },
        "bank_account": {
            "routing_number": "021000021",
            "account_number": "000123456789",
            "account_type": "checking",
            "verified": False,
        },
        "tags": ["late-w2", "priority"],
        "income_items": [
            {"source": "wages", "payer_name": "Bay General Hospital", "amount": 88250.25, "received_on": "2025-12-31"},
            {"source": "interest", "payer_name": "Chesapeake Savings", "amount": 10200, "received_on": "2025-12-31"},
        ],
        "signature_date": "2026-11-26",
        "last_modified": "2026-11-27T14:31:05Z",
        "audit_selected": False,
        "reviewer_email": "reviewer@example.gov",
    }


def _input_text(schema: dict[str, Any], value: Any) -> str:
    """What a person types (or picks) in the input for ``value``: selects post JSON, date-times have no zone."""
    if "enum" in schema or schema.get("type") == "boolean":
        return "true" if value is True else "false" if value is False else f'"{value}"'
    if schema.get("format") == "date-time":
        return str(value).removesuffix("Z")[:16]  # a browser's datetime-local: minutes, no zone
    return str(value)


def form_data(schema: dict[str, Any], value: Any, path: str = "/payload") -> dict[str, str]:
    """The inputs a browser posts for ``value`` (each named by its JSON pointer), written from the schema."""
    if schema.get("type") == "object":
        data: dict[str, str] = {}
        for name, child in schema["properties"].items():
            if name in value:
                data.update(form_data(child, value[name], f"{path}/{name}"))
        return data
    if schema.get("type") == "array":
        data = {}
        for index, item in enumerate(value):
            data.update(form_data(schema["items"], item, f"{path}/{index}"))
        return data
    return {path: _input_text(schema, value)}


def _leaves(fields: list[Any]) -> int:
    """Inputs of a form layout: an array's row counts once."""
    count = 0
    for field in fields:
        if field.kind == "object":
            count += _leaves(field.children)
        elif field.kind == "array" and field.item is not None:
            count += _leaves([field.item])
        else:
            count += 1
    return count


def demo_ready(database_url: str, redis_url: str, var_dir: str) -> None:
    """Production settings on the bench's database and Redis, migrated, flushed, with the demo data."""
    os.environ.update(
        DJANGO_SETTINGS_MODULE="hmsadmin.settings",
        DATABASE_URL=database_url,
        REDIS_URL=redis_url,
        DEBUG="0",
        SECRET_KEY="bench-only-secret-key",
        VAR_DIR=var_dir,
    )
    import django

    django.setup()
    from django.core.management import call_command

    call_command("migrate", verbosity=0)
    call_command("flush", interactive=False, verbosity=0)
    with open(os.devnull, "w") as quiet:
        call_command("load_demo", password="bench-password-123", stdout=quiet)


def _setup(database_url: str, redis_url: str, var_dir: str) -> Any:
    """Production settings on the bench's database and Redis, the demo data, and the 50-field event type."""
    demo_ready(database_url, redis_url, var_dir)
    from django.core.management import call_command

    from busapp.actions.registry import event_type_create, schema_version_create, topic_create

    call_command("collectstatic", interactive=False, verbosity=0)  # DEBUG=0 serves the hashed manifest's names
    topic = topic_create(name=TOPIC, actor="bench", description="The publish form benchmark's topic.")
    event_type = event_type_create(topic=topic, name=EVENT_TYPE, actor="bench", description="50 fields.")
    return schema_version_create(event_type=event_type, schema=bench_schema(), actor="bench")


def _timed(request: Callable[[], Any], before: Callable[[], None] | None = None) -> tuple[float, float]:
    """Wall and CPU milliseconds of one request (``before`` runs untimed ahead of it)."""
    if before is not None:
        before()
    wall, cpu = time.perf_counter(), time.process_time()
    request()
    return (time.perf_counter() - wall) * 1000, (time.process_time() - cpu) * 1000


def _p(times: list[float], percent: int) -> float:
    """The ``percent`` percentile (nearest rank)."""
    ordered = sorted(times)
    return ordered[max(0, -(-len(ordered) * percent // 100) - 1)]


def _median_us(call: Callable[[], Any], count: int = 200) -> float:
    """Median microseconds of one direct call."""
    return statistics.median(_timed(call)[0] for _ in range(count)) * 1000


def main() -> None:
    """Check the page and the preview once, then time every path and print the figures against the aim."""
    arguments = _arguments()
    redis_server = RedisServer()
    redis_server.start()
    workdir = tempfile.mkdtemp(prefix="hms-bench-forms-")
    database_url = arguments.database_url or f"sqlite:///{workdir}/bench.sqlite3"
    try:
        version = _setup(database_url, redis_server.url(0), workdir)
        from django.contrib.auth.models import User
        from django.template.backends.django import Template as DjangoTemplate
        from django.test import Client

        from busapp import schema_forms
        from busapp.validation import payload_errors, validator_cache_clear

        layout = schema_forms.form_layout(version)
        assert layout.drawable, layout.undrawable
        leaves = _leaves(layout.fields)
        assert leaves == LEAF_FIELDS, f"the schema has {leaves} inputs, not {LEAF_FIELDS}"

        client = Client()
        client.force_login(User.objects.get(username="admin"))
        query = {"type": EVENT_TYPE}
        payload = bench_payload()
        posted = {"type": EVENT_TYPE, "action": "preview", **form_data(bench_schema(), payload)}

        page = client.get(PAGE, query)
        assert page.status_code == 200, page.status_code
        html = page.content.decode()
        for name in form_data(bench_schema(), payload):
            row_template = re.sub(r"/[0-9]+(/|$)", r"/__index__\1", name)
            assert f'name="{name}"' in html or f'name="{row_template}"' in html, f"the page has no input {name}"
        preview = client.post(PAGE, posted)
        assert preview.status_code == 200, preview.content.decode()[-3000:]
        assert b"Check before it goes out" in preview.content
        assert payload_errors(version, payload) == []

        get = lambda: client.get(PAGE, query)  # noqa: E731
        post = lambda: client.post(PAGE, posted)  # noqa: E731

        def forget_all() -> None:
            schema_forms._layouts.clear()
            validator_cache_clear()

        # The paths take turns, request by request, so a busy moment on the machine falls on all of them.
        paths: list[tuple[str, Callable[[], Any], Callable[[], None] | None]] = [
            ("GET form, warm (layout cached, as production runs)", get, None),
            ("GET form, layout cache cleared per request (baseline)", get, schema_forms._layouts.clear),
            ("POST preview of the filled form, warm", post, None),
            ("POST preview, layout and validator cleared per request", post, forget_all),
        ]
        for _ in range(20):  # untimed: imports, template loading, first connections
            for _, request, before in paths:
                _timed(request, before)
        count = arguments.requests
        walls: dict[str, list[float]] = {name: [] for name, _, _ in paths}
        cpus: dict[str, list[float]] = {name: [] for name, _, _ in paths}
        for _ in range(count):
            for name, request, before in paths:
                wall, cpu = _timed(request, before)
                walls[name].append(wall)
                cpus[name].append(cpu)
        warm, uncached = walls[paths[0][0]], walls[paths[1][0]]

        # The template's share of a warm GET: Django's render of publish/form.html timed inside the request.
        rendering: list[float] = []
        whole: list[float] = []
        captured: list[tuple[Any, ...]] = []  # the last render's template, context and request, rendered again below
        original_render = DjangoTemplate.render

        def timed_render(self: Any, context: Any = None, request: Any = None) -> Any:
            if self.template.name != "publish/form.html":
                return original_render(self, context, request)
            captured[:] = [(self, context, request)]
            start = time.perf_counter()
            text = original_render(self, context, request)
            rendering.append((time.perf_counter() - start) * 1000)
            return text

        DjangoTemplate.render = timed_render  # type: ignore[method-assign]
        try:
            for _ in range(min(count, 200)):
                whole.append(_timed(get)[0])
        finally:
            DjangoTemplate.render = original_render  # type: ignore[method-assign]
        assert len(rendering) == len(whole), "the page was not rendered from publish/form.html"

        # The pieces, called directly (median of 200 calls each).
        def build() -> None:
            schema_forms._layouts.clear()
            schema_forms.form_layout(version)

        pieces = [
            ("form_layout: the schema parsed into a layout (uncached)", _median_us(build)),
            (
                "form_bind: a fresh form bound to the schema's defaults",
                _median_us(lambda: schema_forms.form_bind(layout, None)),
            ),
            (
                "publish/form.html rendered again with a warm GET's context",
                _median_us(lambda: original_render(*captured[0])),
            ),
            (
                "payload_errors: the filled payload validated (warm)",
                _median_us(lambda: payload_errors(version, payload)),
            ),
        ]

        profile_text = ""
        if arguments.profile:
            profiler = cProfile.Profile()
            profiler.enable()
            for _ in range(arguments.profile):
                get()
            profiler.disable()
            out = io.StringIO()
            pstats.Stats(profiler, stream=out).sort_stats("tottime").print_stats(12)
            out.write("\n")
            pstats.Stats(profiler, stream=out).sort_stats("cumulative").print_stats(25)
            profile_text = out.getvalue()
    finally:
        redis_server.stop()
        shutil.rmtree(workdir, ignore_errors=True)
    from django.db import connection

    print(
        f"machine: {platform.node()} {platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}"
    )
    print(f"database: {connection.vendor}; Redis: {redis_server.url(0)} (own redis-server); DEBUG=0")
    print(f"load average at the end: {', '.join(f'{load:.2f}' for load in os.getloadavg())}")
    print(f"page: GET {PAGE}?type={EVENT_TYPE} as admin, {leaves} inputs, {len(html):,} bytes of HTML")
    print(f"preview: POST of {len(posted) - 2} inputs (every field, two rows in each array); {count} requests a path")
    print()
    print(f"{'path':<60}{'p50 ms':>8}{'p95 ms':>8}{'max ms':>8}{'CPU p50':>9}{'CPU p95':>9}")
    for name, _, _ in paths:
        wall_ms, cpu_ms = walls[name], cpus[name]
        print(
            f"{name:<60}{_p(wall_ms, 50):>8.2f}{_p(wall_ms, 95):>8.2f}{max(wall_ms):>8.2f}"
            f"{_p(cpu_ms, 50):>9.2f}{_p(cpu_ms, 95):>9.2f}"
        )
    print("(CPU: this process's CPU time for the request; wall far above it is time the machine gave to others)")
    print()
    print(
        f"cached vs uncached GET: p50 {_p(uncached, 50) / _p(warm, 50):.2f}x faster, "
        f"p95 {_p(uncached, 95) / _p(warm, 95):.2f}x faster"
    )
    print(
        f"rendering publish/form.html inside warm GETs: p50 {statistics.median(rendering):.2f} ms "
        f"of {statistics.median(whole):.2f} ms, {sum(rendering) / sum(whole):.0%} of the time"
    )
    met = _p(warm, 95) < AIM_MS
    print(
        f"aim: the form page under {AIM_MS:.0f} ms server time for 50 fields: "
        f"{'met' if met else 'NOT met'}, judged on p95 (warm p50 {_p(warm, 50):.1f} ms, p95 {_p(warm, 95):.1f} ms)"
    )
    print()
    print("pieces, called directly (median):")
    for name, micros in pieces:
        print(f"  {name:<60}{micros / 1000:>8.2f} ms")
    if profile_text:
        print()
        print(f"cProfile of {arguments.profile} warm GETs:")
        print(profile_text)


if __name__ == "__main__":
    main()
