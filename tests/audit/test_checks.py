"""The deploy check of the web process's database role (issue 14, defect 5): a role that
owns the audit table, or a superuser, could switch the append-only triggers off."""

import pytest
from django.core.checks import run_checks
from django.db import connection

pytestmark = pytest.mark.django_db


def _audit_ids() -> set[str]:
    messages = run_checks(include_deployment_checks=True, databases=["default"])
    return {m.id for m in messages if m.id.startswith("audit.")}


def _probe_role(cursor) -> str:
    """A role that exists only inside this test's transaction (roles are cluster-wide:
    named after the test database so parallel suites on one server do not collide)."""
    name = f"{connection.settings_dict['NAME']}_web_probe"
    cursor.execute(f'CREATE ROLE "{name}" NOSUPERUSER NOLOGIN')
    cursor.execute(f'GRANT SELECT, INSERT ON audit_auditevent TO "{name}"')
    return name


@pytest.mark.postgres
def test_superuser_role_is_reported():
    with connection.cursor() as cursor:
        cursor.execute("SELECT rolsuper FROM pg_roles WHERE rolname = current_user")
        assert cursor.fetchone()[0], "the test suite is expected to run as a superuser"
    assert "audit.W002" in _audit_ids()


@pytest.mark.postgres
def test_role_owning_the_audit_table_is_reported():
    with connection.cursor() as cursor:
        role = _probe_role(cursor)
        cursor.execute(f'ALTER TABLE audit_auditevent OWNER TO "{role}"')
        cursor.execute(f'SET ROLE "{role}"')
    try:
        ids = _audit_ids()
    finally:
        with connection.cursor() as cursor:
            cursor.execute("RESET ROLE")
    assert "audit.W001" in ids and "audit.W002" not in ids


@pytest.mark.postgres
def test_a_role_that_only_inserts_passes_when_the_triggers_are_on():
    with connection.cursor() as cursor:
        role = _probe_role(cursor)
        # The test database runs without the TRUNCATE trigger (tests/conftest.py).
        cursor.execute("ALTER TABLE audit_auditevent ENABLE TRIGGER audit_event_no_truncate")
        cursor.execute(f'SET ROLE "{role}"')
    try:
        ids = _audit_ids()
    finally:
        with connection.cursor() as cursor:
            cursor.execute("RESET ROLE")
    assert ids == set()


@pytest.mark.postgres
def test_a_disabled_trigger_is_reported():
    with connection.cursor() as cursor:
        cursor.execute("ALTER TABLE audit_auditevent DISABLE TRIGGER audit_event_no_truncate")
    assert "audit.W003" in _audit_ids()


def test_other_databases_are_reported_unprotected():
    if connection.vendor == "postgresql":
        pytest.skip("the PostgreSQL case is covered above")
    assert _audit_ids() == {"audit.W004"}


def test_database_checks_run_only_when_a_database_is_named():
    messages = run_checks(include_deployment_checks=True)
    assert not [m for m in messages if m.id.startswith("audit.")]
