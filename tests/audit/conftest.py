import json

import pytest
from django.db import connection, transaction

from apps.audit import chain
from apps.audit.models import AuditEvent
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


def rewrite_from(sequence: int, data: dict) -> None:
    """The probe's attack: change one event's data and recompute its hash and every later
    hash and prev_hash with apps.audit.chain, so the chain is consistent again."""
    rows = AuditEvent.objects.filter(sequence__gte=sequence).order_by("sequence")
    records = [
        dict(zip(chain.CHAIN_FIELDS, r, strict=True)) for r in rows.values_list(*chain.CHAIN_FIELDS)
    ]
    prev = records[0]["prev_hash"]
    for record in records:
        if record["sequence"] == sequence:
            record["data"] = data
        record["prev_hash"] = prev
        record["hash"] = chain.recompute(record)
        tamper(
            "UPDATE audit_auditevent SET data = %s, prev_hash = %s, hash = %s WHERE sequence = %s",
            [json.dumps(record["data"]), record["prev_hash"], record["hash"], record["sequence"]],
        )
        prev = record["hash"]
