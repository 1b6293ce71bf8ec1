"""The database itself refuses to change or remove audit entries (the app never tries)."""

from typing import Any

from django.db import migrations

POSTGRES_CREATE = """
CREATE OR REPLACE FUNCTION busapp_audit_append_only() RETURNS trigger AS $$
BEGIN
    RAISE EXCEPTION 'the audit log is append-only: % on busapp_auditentry refused', TG_OP;
END;
$$ LANGUAGE plpgsql;
CREATE TRIGGER audit_append_only BEFORE UPDATE OR DELETE ON busapp_auditentry
    FOR EACH ROW EXECUTE FUNCTION busapp_audit_append_only();
"""
POSTGRES_DROP = """
DROP TRIGGER IF EXISTS audit_append_only ON busapp_auditentry;
DROP FUNCTION IF EXISTS busapp_audit_append_only();
"""
# SQLite empties tables with DELETE when tests flush, so only UPDATE is refused there;
# a removed entry still breaks the hash chain, which verify_audit_log reports.
SQLITE_CREATE = """
CREATE TRIGGER audit_append_only BEFORE UPDATE ON busapp_auditentry
BEGIN SELECT RAISE(ABORT, 'the audit log is append-only: UPDATE on busapp_auditentry refused'); END;
"""
SQLITE_DROP = "DROP TRIGGER IF EXISTS audit_append_only;"


def create_trigger(apps: Any, schema_editor: Any) -> None:
    """Install the trigger for this database."""
    vendor = schema_editor.connection.vendor
    if vendor == "postgresql":
        schema_editor.execute(POSTGRES_CREATE, params=None)
    elif vendor == "sqlite":
        schema_editor.execute(SQLITE_CREATE)


def drop_trigger(apps: Any, schema_editor: Any) -> None:
    """Remove the trigger for this database."""
    vendor = schema_editor.connection.vendor
    if vendor == "postgresql":
        schema_editor.execute(POSTGRES_DROP)
    elif vendor == "sqlite":
        schema_editor.execute(SQLITE_DROP)


class Migration(migrations.Migration):
    """Append-only audit table."""

    dependencies = [("busapp", "0001_initial")]

    operations = [migrations.RunPython(create_trigger, drop_trigger)]
