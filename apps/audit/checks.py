"""Deploy checks of the database role the web process uses (`manage.py check --deploy
--database default`): the append-only triggers only bind a role that cannot switch them
off, that is one that neither owns the audit table nor is a superuser."""

from collections.abc import Iterable
from typing import Any

from django.core.checks import CheckMessage, Tags, Warning, register
from django.db import DatabaseError, connections

from apps.audit.models import AuditEvent

TRIGGERS = ("audit_event_append_only", "audit_event_no_truncate")
ROLE_HINT = (
    "Run migrations as a separate owner role and give the web and worker processes a role "
    "with SELECT, INSERT on audit_auditevent (and USAGE on its sequence) only; see the "
    "README's 'Audit log' section."
)


def _role_warnings(alias: str) -> list[CheckMessage]:
    table = AuditEvent._meta.db_table
    with connections[alias].cursor() as cursor:
        cursor.execute(
            """
            SELECT current_user, r.rolsuper, t.tableowner,
                   pg_has_role(current_user, t.tableowner, 'MEMBER')
            FROM pg_roles r LEFT JOIN pg_tables t ON t.tablename = %s
                 AND t.schemaname = ANY (current_schemas(false))
            WHERE r.rolname = current_user
            """,
            [table],
        )
        user, superuser, owner, member_of_owner = cursor.fetchone()
        cursor.execute(
            "SELECT tgname, tgenabled FROM pg_trigger WHERE tgrelid = %s::regclass",
            [table],
        )
        triggers = dict(cursor.fetchall())
    found: list[CheckMessage] = []
    if superuser:
        found.append(
            Warning(
                f"The database role '{user}' of database '{alias}' is a superuser: it can "
                "disable the audit log's append-only triggers and rewrite history.",
                hint=ROLE_HINT,
                id="audit.W002",
            )
        )
    elif owner is not None and member_of_owner:
        found.append(
            Warning(
                f"The database role '{user}' of database '{alias}' owns the audit table "
                f"{table} (owner '{owner}'): it can disable the append-only triggers.",
                hint=ROLE_HINT,
                id="audit.W001",
            )
        )
    for name in TRIGGERS:
        state = triggers.get(name)
        if state is None or state == "D":
            found.append(
                Warning(
                    f"The audit trigger {name} on {table} is "
                    f"{'missing' if state is None else 'disabled'} in database '{alias}'.",
                    hint="Run `manage.py migrate audit`, or ALTER TABLE "
                    f"{table} ENABLE TRIGGER {name} as the table's owner.",
                    id="audit.W003",
                )
            )
    return found


@register(Tags.database, Tags.security, deploy=True)
def audit_database_role(
    app_configs: Iterable[Any] | None = None, databases: Iterable[str] | None = None, **kwargs: Any
) -> list[CheckMessage]:
    """Database checks run only when asked for a database (`--database default`)."""
    found: list[CheckMessage] = []
    for alias in databases or ():
        connection = connections[alias]
        if connection.vendor != "postgresql":
            found.append(
                Warning(
                    f"Database '{alias}' is {connection.vendor}: the audit log has no "
                    "append-only protection there (PostgreSQL is required in production).",
                    id="audit.W004",
                )
            )
            continue
        try:
            found.extend(_role_warnings(alias))
        except DatabaseError as exc:
            found.append(
                Warning(
                    f"Could not inspect the audit table's protection in database '{alias}': {exc}",
                    id="audit.W005",
                )
            )
    return found
