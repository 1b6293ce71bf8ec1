"""Take the README's screenshots: `.venv/bin/python docs/screenshots.py`.

Starts its own Redis and a throwaway SQLite database, loads the demo data, publishes a
couple of events, runs the web app (uvicorn, as in production) on a free port, signs in
as `policy` in headless Chromium (Debian's `chromium`, 1280x900) and saves
docs/dashboard.png, docs/live.png, docs/dead-letters.png, docs/publish-form.png,
docs/preview.png and docs/withholding-form.png; then, as `auditor`, docs/history.png (the
history narrowed by a payload condition), docs/event-record.png (one event's record) and
docs/audit.png (the audit log, its chain just checked); last, with a bus worker and three of
the demo's services on hms_subscriber running, docs/drift.png (the topic page's "In force now"
with mobile-tax-app, never started, overdue).
`--out DIR` saves the pictures in DIR instead of docs/.
Everything it started is stopped again; nothing outside the output directory is changed.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
sys.path.insert(0, str(ROOT))

from playwright.sync_api import Page, sync_playwright  # noqa: E402

from tests.e2e.conftest import CHROMIUM_ARGS, VIEWPORT  # noqa: E402
from tests.support import OutputWatcher, RedisServer, free_port, service_start, wait_for  # noqa: E402

# The standard deductions (single filer) of 2023 and 2024: the history the dashboard shows.
DEMO_DEDUCTIONS = (13850, 14600)
# Published after the publisher's pictures (with the form's 15000), for the history's: 2025 and 2026.
LATER_DEDUCTIONS = (15750, 16100)
# The payload condition the history picture is narrowed by: every deduction but 2023's.
HISTORY_CONDITION = "standard_deduction >= 14000"
# A proposed tax_policy.updated v2 that breaks BACKWARD three ways: whole dollars, and a new required field.
REGISTRY_DRAFT = {
    "type": "object",
    "required": ["standard_deduction", "credit_cap"],
    "properties": {
        "standard_deduction": {"type": "integer", "minimum": 0, "title": "Standard deduction"},
        "credit_cap": {"type": "number", "minimum": 0, "title": "Credit cap"},
    },
}
REFUSED_DEDUCTIONS = (-5, -100, -14600)
# The drift picture: these services catch up on the value in force; mobile-tax-app, given a short deadline, never runs.
APPLYING_SERVICES = ("e-file", "withholding-calculator", "analytics-dashboard")
SILENT_SERVICE = "mobile-tax-app"
SILENT_DEADLINE_SECONDS = 1


def manage(*args: str, env: dict[str, str]) -> str:
    """Run one manage.py command, failing loudly with its output; what it printed."""
    done = subprocess.run(  # noqa: S603 (our own manage.py, fixed arguments)
        [sys.executable, str(ROOT / "manage.py"), *args], env=env, capture_output=True, text=True, check=False
    )
    if done.returncode != 0:
        raise SystemExit(f"manage.py {' '.join(args)} failed:\n{done.stdout}{done.stderr}")
    return done.stdout


def refuse(deduction: int, *, env: dict[str, str]) -> None:
    """Publish a deduction the schema refuses from the command line: it is kept as a dead letter (exit 1)."""
    subprocess.run(  # noqa: S603 (our own manage.py, fixed arguments; exits 1 by design)
        [
            sys.executable,
            str(ROOT / "manage.py"),
            "publish",
            "tax-policy",
            "tax_policy.updated",
            f'{{"standard_deduction": {deduction}}}',
        ],
        env=env,
        capture_output=True,
        check=False,
    )


def port_open(port: int) -> bool:
    """True when something accepts connections on the loopback port."""
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) == 0


@contextmanager
def web_app(env: dict[str, str]) -> Iterator[str]:
    """The ASGI app under uvicorn on a free port; yields its base URL and stops it afterwards."""
    port = free_port()
    command = [sys.executable, "-m", "uvicorn", "hmsadmin.asgi:application", "--host", "127.0.0.1"]
    server = subprocess.Popen(  # noqa: S603 (uvicorn from this virtualenv, fixed arguments)
        [*command, "--port", str(port), "--log-level", "warning"], cwd=ROOT, env=env
    )
    try:
        wait_for(lambda: server.poll() is not None or port_open(port), timeout=30, what=f"uvicorn on port {port}")
        if server.poll() is not None:
            raise SystemExit(f"uvicorn exited with {server.returncode}")
        yield f"http://127.0.0.1:{port}"
    finally:
        server.terminate()
        server.wait(timeout=10)


def sign_in(page: Page, base_url: str, password: str, username: str = "policy") -> None:
    """Sign in as a demo user (the publisher, unless named) through the login form."""
    page.goto(f"{base_url}/accounts/login/")
    page.fill("#id_username", username)
    page.fill("#id_password", password)
    page.get_by_role("button", name="Sign in").click()
    page.wait_for_url(f"{base_url}/")


def take(page: Page, out: Path, name: str, *, full_page: bool = False, at: str = "") -> None:
    """Save the page, from its top (or from the element ``at`` selects), as <out>/<name>.png: no caret, no hover."""
    page.mouse.move(0, 0)
    page.evaluate("() => { document.activeElement?.blur(); window.scrollTo(0, 0); }")
    if at:
        page.locator(at).evaluate("element => window.scrollTo(0, element.getBoundingClientRect().top - 16)")
    path = out / f"{name}.png"
    page.screenshot(path=path, full_page=full_page)
    print(path.relative_to(ROOT) if path.is_relative_to(ROOT) else path)


def screenshots(base_url: str, password: str, out: Path, env: dict[str, str]) -> None:
    """Walk the publish flow as policy staff, then the history and audit log as the auditor; save the pictures."""
    chromium = shutil.which("chromium")
    if chromium is None:
        raise SystemExit("chromium is not on PATH: apt-get install chromium")
    with sync_playwright() as driver:
        browser = driver.chromium.launch(executable_path=chromium, args=CHROMIUM_ARGS)
        page = browser.new_page(viewport=VIEWPORT)
        page.set_default_timeout(15_000)
        sign_in(page, base_url, password)
        page.locator("#events-chart").wait_for()
        page.wait_for_timeout(500)  # the charts' first draw
        take(page, out, "dashboard")

        page.goto(f"{base_url}/live/")
        page.locator("tr.event").first.wait_for()
        refuse(REFUSED_DEDUCTIONS[-1], env=env)  # arrives while the page watches: a dead letter, in red
        page.locator("tr.dead-lettered").wait_for()
        page.wait_for_timeout(1200)  # the sparklines draw once a second
        take(page, out, "live")

        page.goto(f"{base_url}/dlq/")
        take(page, out, "dead-letters")

        page.goto(f"{base_url}/topics/tax-policy/publish/")
        take(page, out, "publish-form")

        page.locator('[name="/payload/standard_deduction"]').fill("15000")
        page.get_by_role("button", name="Preview").click()
        page.locator("#confirm").wait_for()
        take(page, out, "preview")
        page.locator("#confirm").click()  # sent: the history's pictures show it, published by a person
        page.get_by_role("heading", name="Published").wait_for()

        page.goto(f"{base_url}/topics/irs.withholding/publish/")
        page.locator('[name="/payload/tax_year"]').fill("2027")
        page.locator('[name="/payload/effective_date"]').fill("2027-01-01")
        page.locator('[name="/payload/brackets/0/up_to"]').fill("11925")
        page.locator('[name="/payload/brackets/0/rate"]').fill("0.10")
        page.get_by_role("button", name="Add a row").click()
        page.locator('[name="/payload/brackets/1/up_to"]').fill("48475")
        page.locator('[name="/payload/brackets/1/rate"]').fill("0.12")
        # The whole form: the rows are the point of this picture, and they sit below the fold.
        take(page, out, "withholding-form", full_page=True)
        page.context.close()
        for deduction in LATER_DEDUCTIONS:
            payload = f'{{"standard_deduction": {deduction}}}'
            manage("publish", "tax-policy", "tax_policy.updated", payload, "--user", "policy", env=env)

        page = browser.new_page(viewport=VIEWPORT)
        page.set_default_timeout(15_000)
        sign_in(page, base_url, password, "auditor")
        history(page, base_url, out)
        page.context.close()

        page = browser.new_page(viewport=VIEWPORT)
        page.set_default_timeout(15_000)
        sign_in(page, base_url, password, "admin")
        access(page, base_url, out)
        registry(page, base_url, out)
        drift(page, base_url, out, env)
        browser.close()


def drift(page: Page, base_url: str, out: Path, env: dict[str, str]) -> None:
    """As the admin: mobile-tax-app's deadline shortened; three services apply the value in force, it never does."""
    page.goto(f"{base_url}/subscribers/")
    follow = page.locator("#follow-form")
    follow.get_by_label("Subscriber").select_option(label=SILENT_SERVICE)
    follow.get_by_label("Topic").select_option("tax-policy")
    follow.get_by_label("Apply deadline (seconds)").fill(str(SILENT_DEADLINE_SECONDS))
    follow.get_by_role("button", name="Save").click()
    page.locator(".message.success").wait_for()
    # One view token for the three: each catches up on the value in force through the API as it starts.
    token = manage(
        "service_token",
        "create",
        "--service",
        "demo-services",
        "--topic",
        "tax-policy",
        "--no-publish",
        env=env,
    )
    worker = OutputWatcher(
        subprocess.Popen(  # noqa: S603 (our own manage.py, fixed arguments)
            [sys.executable, str(ROOT / "manage.py"), "bus_worker"],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
    )
    services: list[OutputWatcher] = []
    try:
        worker.wait_for_line("bus worker", timeout=30)
        api = {"HMS_API_URL": base_url, "HMS_API_TOKEN": token.strip()}
        for name in APPLYING_SERVICES:
            services.append(service_start(name, consumer=f"{name}-1", redis_url=env["REDIS_URL"], **api))
        page.goto(f"{base_url}/topics/tax-policy/")
        in_force = page.locator('#in-force section.in-force[data-type="tax_policy.updated"]')
        for name in APPLYING_SERVICES:
            in_force.locator(f'tr.service.applied[data-subscriber="{name}"]').wait_for()
        in_force.locator(f'tr.service.overdue[data-subscriber="{SILENT_SERVICE}"]').wait_for()
        in_force.locator("p.drift").wait_for()
        page.locator("#applied-connection", has_text="live").wait_for()
        take(page, out, "drift", at="h2:has(#applied-connection)")
    finally:
        for service in services:
            service.stop()
        worker.stop()


def registry(page: Page, base_url: str, out: Path) -> None:
    """As the admin: a breaking draft checked (findings, diff, preview, dry run), the versions on the topic page."""
    page.goto(f"{base_url}/topics/tax-policy/types/tax_policy.updated/versions/new/")
    page.locator("#schema").fill(json.dumps(REGISTRY_DRAFT, indent=2))
    page.locator("#check").click()
    page.locator("#verdict").wait_for()
    take(page, out, "registry-check", full_page=True)

    page.goto(f"{base_url}/topics/tax-policy/")
    page.locator("details.versions").first.evaluate("details => { details.open = true; }")
    take(page, out, "topic", full_page=True)


def access(page: Page, base_url: str, out: Path) -> None:
    """As the admin: a grant with an expiry on the access matrix, then a new service token with its secret."""
    page.goto(f"{base_url}/access/")
    grant_form = page.locator("#grant-form")
    grant_form.get_by_label("To", exact=True).select_option(label="auditor")
    grant_form.get_by_label("tax-policy", exact=True).check()
    grant_form.get_by_label("manage", exact=True).check()
    grant_form.get_by_label("Reason", exact=True).fill("replays dead letters while policy is away")
    grant_form.get_by_label("Expires (UTC)").fill("2030-01-31T17:00")
    grant_form.get_by_role("button", name="Grant").click()
    page.locator(".message.success").wait_for()
    take(page, out, "access", full_page=True)

    page.goto(f"{base_url}/access/tokens/")
    token_form = page.locator("#token-form")
    token_form.get_by_label("Service").fill("refund-feed")
    token_form.get_by_label("tax-policy", exact=True).check()
    token_form.get_by_role("button", name="Issue token").click()
    page.locator("#token-secret").wait_for()
    take(page, out, "tokens")


def history(page: Page, base_url: str, out: Path) -> None:
    """As the auditor: the history narrowed by a payload condition, one event's record, the audit log."""
    page.goto(f"{base_url}/events/")
    page.get_by_label("Payload conditions").fill(HISTORY_CONDITION)
    page.locator("form.filters").get_by_role("button", name="Show", exact=True).click()
    page.wait_for_url("**/events/?*where=*")
    page.locator("#history tbody tr").first.wait_for()
    take(page, out, "history")

    # The form's 15000: a person published it, so its record says who and how.
    row = page.locator("#history tbody tr", has_text='"standard_deduction": 15000')
    row.get_by_role("link").first.click()
    page.locator("#record").wait_for()
    take(page, out, "event-record", full_page=True)

    page.goto(f"{base_url}/audit/")
    with page.expect_navigation():  # the check posts, then comes back to the log
        page.get_by_role("button", name="Check new entries now").click()
    page.goto(f"{base_url}/audit/")  # again, without the check's message: the chain status says it
    page.locator("#head-hash").wait_for()
    take(page, out, "audit")


def main() -> None:
    """Set up a private Redis and database, run the app, take the screenshots, stop everything."""
    parser = argparse.ArgumentParser(description="Take the README's screenshots.")
    parser.add_argument("--out", type=Path, default=DOCS, help="where to save the pictures (default: docs/)")
    out = parser.parse_args().out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    workdir = Path(tempfile.mkdtemp(prefix="hms-screenshots-"))
    password = secrets.token_urlsafe(12)
    redis = RedisServer()
    redis.start()
    try:
        env = {
            **os.environ,
            "DATABASE_URL": f"sqlite:///{workdir / 'db.sqlite3'}",
            "REDIS_URL": redis.url(0),
            "DEBUG": "1",
            "VAR_DIR": str(workdir),
            "PYTHONUNBUFFERED": "1",
        }
        manage("migrate", "--noinput", env=env)
        manage("load_demo", "--password", password, env=env)
        for deduction in DEMO_DEDUCTIONS:
            payload = f'{{"standard_deduction": {deduction}}}'
            manage("publish", "tax-policy", "tax_policy.updated", payload, "--user", "policy", env=env)
        for refused in REFUSED_DEDUCTIONS[:-1]:  # kept as dead letters of one cause, grouped on their page
            refuse(refused, env=env)
        with web_app(env) as base_url:
            screenshots(base_url, password, out, env)
    finally:
        redis.stop()
        shutil.rmtree(workdir, ignore_errors=True)
        shutil.rmtree(redis.workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
