"""Production settings and /metrics: a short token is refused at start; Prometheus
scrapes over plain HTTP without being redirected to HTTPS."""

from tests.test_settings import _manage

PRODUCTION = {
    "SECRET_KEY": "k" + "x9Qz7-pL2!mR4vT8" * 4,
    "STUDIO_PROVENANCE_KEYS": "k1:c2VjcmV0LXNpZ25pbmcta2V5LW9mLTMyLWJ5dGVzISE=",
    "STUDIO_WEBHOOK_SECRET_KEYS": "q3m5hZ0kQb0e1x8fX2V8m6T9b9o4m2y0wS9hD5dKp1c=",
    "STUDIO_AUDIT_CHECKPOINT_KEYS": "c1:MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY=",
    "ALLOWED_HOSTS": "testserver",
}


def test_production_refuses_a_short_metrics_token(tmp_path):
    result = _manage(
        "check",
        "--settings=studio.settings.production",
        STUDIO_DATA_DIR=str(tmp_path),
        STUDIO_METRICS_TOKEN="short",
        **PRODUCTION,
    )
    assert result.returncode != 0
    assert "STUDIO_METRICS_TOKEN must be at least 32 characters" in result.stderr


SCRAPE = (
    "from django.test import Client; c = Client(); "
    "print(c.get('/metrics', headers={'Authorization': 'Bearer ' + 'm' * 40}).status_code, "
    "c.get('/squads/').status_code)"
)


def test_metrics_are_served_over_plain_http_in_production(tmp_path):
    env = {
        "STUDIO_DATA_DIR": str(tmp_path),
        "STUDIO_METRICS_TOKEN": "m" * 40,
        # Its own database: CI's DATABASE_URL names a database only the test runner's
        # copy (test_<name>) of which exists.
        "DATABASE_URL": f"sqlite:///{tmp_path}/studio.sqlite3",
        **PRODUCTION,
    }
    migrated = _manage("migrate", "--settings=studio.settings.production", **env)
    assert migrated.returncode == 0, migrated.stderr
    result = _manage(
        "shell",
        "--settings=studio.settings.production",
        "-c",
        SCRAPE,
        **env,
    )
    assert result.returncode == 0, result.stderr
    # /metrics answers; any other page is still redirected to HTTPS.
    assert result.stdout.split()[-2:] == ["200", "301"]


ALLOW_CHECK = "from django.conf import settings; print(repr(settings.STUDIO_METRICS_ALLOW))"


def test_production_allows_no_address_unless_listed(tmp_path):
    """Behind a same-host proxy every request comes from loopback: production does not
    trust it by default."""
    env = {"STUDIO_DATA_DIR": str(tmp_path), **PRODUCTION}
    default = _manage("shell", "--settings=studio.settings.production", "-c", ALLOW_CHECK, **env)
    assert default.returncode == 0, default.stderr
    assert default.stdout.strip().splitlines()[-1] == "[]"
    listed = _manage(
        "shell",
        "--settings=studio.settings.production",
        "-c",
        ALLOW_CHECK,
        STUDIO_METRICS_ALLOW="10.0.0.5/32",
        **env,
    )
    assert listed.stdout.strip().splitlines()[-1] == "['10.0.0.5/32']"
