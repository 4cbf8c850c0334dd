"""On PostgreSQL, reject TRUNCATE on audit events too: row triggers (0002) do not fire
for it. The web role should still not own the table, since an owner can disable
triggers (the deploy check `audit.W001` says so)."""

from django.db import migrations

INSTALL = """
DROP TRIGGER IF EXISTS audit_event_no_truncate ON audit_auditevent;
CREATE TRIGGER audit_event_no_truncate
    BEFORE TRUNCATE ON audit_auditevent
    FOR EACH STATEMENT EXECUTE FUNCTION audit_event_append_only();
"""

REMOVE = "DROP TRIGGER IF EXISTS audit_event_no_truncate ON audit_auditevent;"


def install(apps, schema_editor):
    if schema_editor.connection.vendor == "postgresql":
        schema_editor.execute(INSTALL, params=None)


def remove(apps, schema_editor):
    if schema_editor.connection.vendor == "postgresql":
        schema_editor.execute(REMOVE, params=None)


class Migration(migrations.Migration):
    dependencies = [("audit", "0002_append_only_trigger")]

    operations = [migrations.RunPython(install, remove, elidable=False)]
