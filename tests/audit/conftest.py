import pytest
from django.db import connection, transaction

from apps.audit.services import audit_log
from tests.factories import UserFactory


@pytest.fixture
def events(db):
    """Seven chained events (unicode and nested data)."""
    actor = UserFactory(username="auditor")
    with transaction.atomic():
        for i in range(1, 8):
            audit_log(
                actor=actor,
                action="test.event",
                target_type="thing",
                target_id=i,
                data={"n": i, "text": "héllo ✓", "nested": {"b": [1, 2.5, None]}},
            )
    return actor


def tamper(sql: str, params: list) -> None:
    """Change rows behind the application's back. On PostgreSQL the append-only
    trigger is switched off for this transaction, as an attacker with superuser
    rights could; the chain must still give them away."""
    with connection.cursor() as cursor:
        if connection.vendor == "postgresql":
            cursor.execute("SET LOCAL session_replication_role = replica")
        cursor.execute(sql, params)
        if connection.vendor == "postgresql":
            cursor.execute("SET LOCAL session_replication_role = origin")
