"""Production settings (DEBUG=0) read from the environment: HSTS, the proxy's scheme, who may scrape /metrics.

Settings are read when the settings module is imported, so each case runs in a process of its own.
"""

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parent.parent

# Requests made in the child process with Django's test client; it prints what the response says.
_PROBE = """
import json, os, sys
import django
django.setup()
from django.conf import settings
from django.test import Client
answers = []
for path, extra in json.loads(sys.argv[1]):
    response = Client(raise_request_exception=False).get(path, **extra)
    answers.append({
        "status": response.status_code,
        "hsts": response.headers.get("Strict-Transport-Security"),
        "location": response.headers.get("Location"),
    })
print(json.dumps({"answers": answers, "metrics_allow_loopback": settings.METRICS_ALLOW_LOOPBACK}))
"""


def _environment(tmp_path: Path, **variables: str) -> dict[str, str]:
    """A production environment: DEBUG=0, a secret key, nothing of the parent's security settings."""
    inherited = {
        name: value
        for name, value in os.environ.items()
        if not name.startswith(("SECURE_", "METRICS_", "DEBUG", "USE_X_FORWARDED"))
    }
    return {
        **inherited,
        "DJANGO_SETTINGS_MODULE": "hmsadmin.settings",
        "DEBUG": "0",
        "SECRET_KEY": "a-production-secret-key-for-the-settings-test-that-is-long-and-random-9f8e7d6c5b4a",
        "VAR_DIR": str(tmp_path),
        # An empty database of its own: only the door is looked at, never the figures behind it.
        "DATABASE_URL": f"sqlite:///{tmp_path / 'empty.sqlite3'}",
        **variables,
    }


def _probe(tmp_path: Path, requests: list[tuple[str, dict[str, Any]]], **variables: str) -> dict:
    done = subprocess.run(
        [sys.executable, "-c", _PROBE, json.dumps(requests)],
        env=_environment(tmp_path, **variables),
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_with_debug_off_an_https_response_carries_hsts_for_a_year(tmp_path: Path):
    found = _probe(tmp_path, [("/metrics", {"secure": True}), ("/metrics", {})])

    over_https, over_http = found["answers"]
    assert over_https["hsts"] == "max-age=31536000; includeSubDomains; preload"
    assert over_http["hsts"] is None  # browsers ignore it over plain HTTP, and Django sends it on HTTPS only
    assert over_http["status"] == 403  # no token and no loopback trust in production: nobody scrapes


def test_hsts_follows_the_environment(tmp_path: Path):
    found = _probe(
        tmp_path,
        [("/metrics", {"secure": True})],
        SECURE_HSTS_SECONDS="600",
        SECURE_HSTS_INCLUDE_SUBDOMAINS="0",
        SECURE_HSTS_PRELOAD="0",
    )

    assert found["answers"][0]["hsts"] == "max-age=600"


def test_behind_a_tls_proxy_the_forwarded_scheme_counts_and_plain_http_is_redirected(tmp_path: Path):
    forwarded = {"HTTP_X_FORWARDED_PROTO": "https"}
    found = _probe(
        tmp_path,
        [("/metrics", forwarded), ("/metrics", {}), ("/metrics", {"HTTP_X_FORWARDED_HOST": "bus.example.gov"})],
        SECURE_PROXY_SSL_HEADER="HTTP_X_FORWARDED_PROTO",
        SECURE_SSL_REDIRECT="1",
        USE_X_FORWARDED_HOST="1",
        ALLOWED_HOSTS="testserver,bus.example.gov",
    )

    via_proxy, plain, other_host = found["answers"]
    assert via_proxy["hsts"] == "max-age=31536000; includeSubDomains; preload"
    assert (plain["status"], plain["location"]) == (301, "https://testserver/metrics")
    assert other_host["location"] == "https://bus.example.gov/metrics"


def test_a_proxy_header_written_as_the_http_header_is_refused_with_how_to_write_it(tmp_path: Path):
    done = subprocess.run(
        [sys.executable, "-c", "import django; django.setup()"],
        env=_environment(tmp_path, SECURE_PROXY_SSL_HEADER="X-Forwarded-Proto"),
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )

    assert done.returncode != 0
    assert "SECURE_PROXY_SSL_HEADER='X-Forwarded-Proto': name the header as Django's request.META does" in done.stderr
    assert "HTTP_X_FORWARDED_PROTO" in done.stderr


def test_check_deploy_finds_nothing_to_say_about_hsts(tmp_path: Path):
    done = subprocess.run(
        [sys.executable, "manage.py", "check", "--deploy"],
        env=_environment(tmp_path),
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )

    said = done.stdout + done.stderr
    assert "System check identified" in said or done.returncode == 0, said
    for warning in ("security.W004", "security.W005", "security.W021"):  # HSTS unset, no subdomains, no preload
        assert warning not in said, said


@pytest.mark.parametrize(
    ("variables", "allowed"),
    [
        ({"DEBUG": "1"}, True),
        ({"DEBUG": "0"}, False),
        ({"DEBUG": "1", "METRICS_TOKEN": "t0ken"}, False),
        ({"DEBUG": "0", "METRICS_ALLOW_LOOPBACK": "1"}, True),
    ],
)
def test_loopback_scrapers_are_trusted_only_when_said_or_in_development_without_a_token(tmp_path, variables, allowed):
    found = _probe(tmp_path, [("/metrics", {"REMOTE_ADDR": "127.0.0.1"})], **variables)

    assert found["metrics_allow_loopback"] is allowed
    assert (found["answers"][0]["status"] != 403) is allowed  # past the door (this process has no database)


def test_a_token_and_loopback_trust_together_are_refused_at_start(tmp_path: Path):
    done = subprocess.run(
        [sys.executable, "-c", "import django; django.setup()"],
        env=_environment(tmp_path, METRICS_TOKEN="t0ken", METRICS_ALLOW_LOOPBACK="1"),
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )

    assert done.returncode != 0
    assert "METRICS_ALLOW_LOOPBACK=1 and METRICS_TOKEN are both set" in done.stderr
