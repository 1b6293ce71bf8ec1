"""Take the README's screenshots: `.venv/bin/python docs/screenshots.py`.

Starts its own Redis and a throwaway SQLite database, loads the demo data, publishes a
couple of events, runs the web app (uvicorn, as in production) on a free port, signs in
as `policy` in headless Chromium (Debian's `chromium`, 1280x900) and saves
docs/dashboard.png, docs/publish-form.png, docs/preview.png and docs/withholding-form.png.
Everything it started is stopped again; nothing outside docs/ is changed.
"""

from __future__ import annotations

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
from tests.support import RedisServer, free_port, wait_for  # noqa: E402

# The standard deductions (single filer) of 2023 and 2024: the history the dashboard shows.
DEMO_DEDUCTIONS = (13850, 14600)


def manage(*args: str, env: dict[str, str]) -> None:
    """Run one manage.py command, failing loudly with its output."""
    done = subprocess.run(  # noqa: S603 (our own manage.py, fixed arguments)
        [sys.executable, str(ROOT / "manage.py"), *args], env=env, capture_output=True, text=True, check=False
    )
    if done.returncode != 0:
        raise SystemExit(f"manage.py {' '.join(args)} failed:\n{done.stdout}{done.stderr}")


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


def sign_in(page: Page, base_url: str, password: str) -> None:
    """Sign in as the demo publisher through the login form."""
    page.goto(f"{base_url}/accounts/login/")
    page.fill("#id_username", "policy")
    page.fill("#id_password", password)
    page.get_by_role("button", name="Sign in").click()
    page.wait_for_url(f"{base_url}/")


def take(page: Page, name: str, *, full_page: bool = False) -> None:
    """Save the page, from its top, as docs/<name>.png: no caret, no hover colour."""
    page.mouse.move(0, 0)
    page.evaluate("() => { document.activeElement?.blur(); window.scrollTo(0, 0); }")
    page.screenshot(path=DOCS / f"{name}.png", full_page=full_page)
    print(f"docs/{name}.png")


def screenshots(base_url: str, password: str) -> None:
    """Walk the publish flow as policy staff and save the four pictures."""
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
        take(page, "dashboard")

        page.goto(f"{base_url}/live/")
        page.locator("tr.event").first.wait_for()
        page.wait_for_timeout(1200)  # the sparklines draw once a second
        take(page, "live")

        page.goto(f"{base_url}/dlq/")
        take(page, "dead-letters")

        page.goto(f"{base_url}/topics/tax-policy/publish/")
        take(page, "publish-form")

        page.locator('[name="/payload/standard_deduction"]').fill("15000")
        page.get_by_role("button", name="Preview").click()
        page.locator("#confirm").wait_for()
        take(page, "preview")

        page.goto(f"{base_url}/topics/irs.withholding/publish/")
        page.locator('[name="/payload/tax_year"]').fill("2027")
        page.locator('[name="/payload/effective_date"]').fill("2027-01-01")
        page.locator('[name="/payload/brackets/0/up_to"]').fill("11925")
        page.locator('[name="/payload/brackets/0/rate"]').fill("0.10")
        page.get_by_role("button", name="Add a row").click()
        page.locator('[name="/payload/brackets/1/up_to"]').fill("48475")
        page.locator('[name="/payload/brackets/1/rate"]').fill("0.12")
        # The whole form: the rows are the point of this picture, and they sit below the fold.
        take(page, "withholding-form", full_page=True)
        browser.close()


def main() -> None:
    """Set up a private Redis and database, run the app, take the screenshots, stop everything."""
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
        refused = '{"standard_deduction": -5}'  # kept as a dead letter, for its page
        subprocess.run(  # noqa: S603 (our own manage.py, fixed arguments; exits 1 by design)
            [sys.executable, str(ROOT / "manage.py"), "publish", "tax-policy", "tax_policy.updated", refused],
            env=env,
            capture_output=True,
            check=False,
        )
        with web_app(env) as base_url:
            screenshots(base_url, password)
    finally:
        redis.stop()
        shutil.rmtree(workdir, ignore_errors=True)
        shutil.rmtree(redis.workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
