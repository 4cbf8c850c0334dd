import json
from collections.abc import Callable

import pytest
from django.db import connection
from django.test import Client

from apps.squads import services
from tests.factories import UserFactory, make_squad

# tests.process_plugin: a failing test names a dead helper process (signal, last output).
pytest_plugins = ["tests.process_plugin", "pytester"]


@pytest.fixture(scope="session")
def django_db_setup(django_db_setup, django_db_blocker):
    """Tests on real transactions end with Django's flush, a TRUNCATE of every table,
    which the audit table refuses on PostgreSQL (apps/audit/migrations/0003). In the test
    database only, that trigger is off; tests/audit/test_chain.py turns it on to test it."""
    with django_db_blocker.unblock():
        if connection.vendor == "postgresql":
            with connection.cursor() as cursor:
                cursor.execute(
                    "ALTER TABLE audit_auditevent DISABLE TRIGGER audit_event_no_truncate"
                )


@pytest.fixture(autouse=True)
def _clear_cache():
    """Cached tokens, permissions and prompts must not outlive a test's database rows
    (SQLite reuses primary keys after a rollback)."""
    from django.core.cache import cache

    from apps.core import ratelimit
    from apps.core.memo import HOT
    from apps.squads.selectors import SQUAD_IDS

    cache.clear()
    SQUAD_IDS.clear()
    HOT.clear()
    ratelimit.reset()
    yield
    cache.clear()
    SQUAD_IDS.clear()
    HOT.clear()
    ratelimit.reset()


def _restore_default_targets() -> None:
    """Put back the global `local` target with the data migration's own code."""
    from importlib import import_module

    from django.apps import apps

    import_module("apps.generation.migrations.0002_default_local_target").create(apps, None)
    import_module("apps.basemodels.migrations.0002_default_smollm2").create(apps, None)


_DB_FIXTURES = {"db", "transactional_db", "live_server", "django_db_reset_sequences"}


@pytest.fixture(autouse=True)
def _data_migration_rows(request):
    """Every test that uses the database finds the rows data migrations wrote (the
    global `local` target), whatever ran before it in its process: tests on real
    transactions end with a flush that deletes them, and under xdist the order of tests
    in a process is not the file order. Written before the test's own transaction, so
    it stays."""
    marked = request.node.get_closest_marker("django_db")
    if not (marked or _DB_FIXTURES & set(request.fixturenames)):
        return
    request.getfixturevalue("django_db_setup")
    with request.getfixturevalue("django_db_blocker").unblock():
        _restore_default_targets()


@pytest.fixture
def squad(db):
    """Squad 'acme' with one member per role: owner, engineer, sme, compliance, viewer;
    plus 'outsider', a user in no squad."""
    UserFactory(username="outsider")
    owner = UserFactory(username="owner")
    return make_squad(
        owner=owner,
        members={
            "engineer": ["prompt_engineer"],
            "sme": ["sme"],
            "compliance": ["compliance"],
            "viewer": ["viewer"],
        },
    )


class ApiClient:
    """Django's test client speaking JSON with a bearer token."""

    def __init__(self, token: str | None):
        self.client = Client()
        self.headers = {"Authorization": f"Bearer {token}"} if token else {}

    def call(self, method: str, path: str, body: object = None, raw: str | None = None):
        kwargs = {"headers": self.headers}
        if raw is not None or body is not None:
            kwargs["data"] = raw if raw is not None else json.dumps(body)
            kwargs["content_type"] = "application/json"
        return getattr(self.client, method.lower())(path, **kwargs)


@pytest.fixture
def api_as() -> Callable[[str], ApiClient]:
    """api_as("owner") -> an ApiClient with a fresh token of that user."""

    def make(username: str) -> ApiClient:
        user = UserFactory(username=username)
        _, secret = services.api_token_create(actor=user, name="test")
        return ApiClient(secret)

    return make


def pytest_collection_modifyitems(config, items):
    for item in items:
        if "postgres" in item.keywords:
            item.add_marker(
                pytest.mark.skipif(
                    connection.vendor != "postgresql",
                    reason="needs PostgreSQL (set DATABASE_URL)",
                )
            )


_EXIT_STATUS: list[int] = []


def pytest_sessionfinish(session, exitstatus):
    _EXIT_STATUS.append(int(exitstatus))


@pytest.hookimpl(trylast=True)
def pytest_unconfigure(config):
    """Leave without finalising the interpreter once torch is loaded. A test that ran
    the decode loop behind a threaded HTTP server can leave torch's thread pool in a
    state its C++ destructors abort on at exit ("terminate called without an active
    exception", exit 134) after every test passed; the results are reported by now, so
    exit with pytest's own status instead."""
    import os
    import sys

    if "torch" in sys.modules and _EXIT_STATUS:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(_EXIT_STATUS[-1])
