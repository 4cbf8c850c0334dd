"""Content-Security-Policy on every response (apps/core/csp.py), and no template that
needs an exception to it. The browser tests (tests/browser/conftest.py) fail on any
violation a real page reports."""

import re
from pathlib import Path

import pytest
from django.test import Client

from apps.core.csp import HEADER
from tests.factories import PASSWORD

pytestmark = pytest.mark.django_db
TEMPLATES = Path(__file__).resolve().parents[2] / "templates"


def _directives(policy: str) -> dict[str, str]:
    return {d.split(" ", 1)[0]: d.split(" ", 1)[1] for d in policy.split("; ")}


def test_pages_get_a_strict_policy_with_a_fresh_nonce(squad) -> None:
    client = Client()
    assert client.login(username="owner", password=PASSWORD)
    first, second = client.get("/squads/acme/"), client.get("/squads/acme/")
    policy = _directives(first[HEADER])
    nonce = re.search(r"'nonce-([^']+)'", policy["script-src"]).group(1)
    assert policy["script-src"] == f"'self' 'nonce-{nonce}'"
    assert policy["style-src"] == f"'self' 'nonce-{nonce}'"
    assert policy["default-src"] == "'self'"
    assert policy["object-src"] == "'none'" and policy["base-uri"] == "'none'"
    assert policy["frame-ancestors"] == "'none'" and policy["form-action"] == "'self'"
    assert "unsafe-inline" not in first[HEADER] and "unsafe-eval" not in first[HEADER]
    assert "http" not in first[HEADER]  # no remote origin anywhere
    assert nonce not in second[HEADER]
    assert f'nonce="{nonce}"' in first.content.decode()  # the page's own script tags


def test_json_and_files_may_run_nothing(squad, api_as) -> None:
    response = api_as("owner").call("GET", "/api/v1/me")
    assert response[HEADER] == "default-src 'none'; frame-ancestors 'none'; base-uri 'none'"


def test_login_and_error_pages_too(db) -> None:
    assert "nonce-" in Client().get("/login/")[HEADER]
    assert HEADER in Client().get("/no-such-page/")


def test_admin_allows_django_admin_inline_styles_but_no_inline_script(db) -> None:
    from tests.factories import UserFactory

    UserFactory(username="root", is_staff=True, is_superuser=True)
    client = Client()
    assert client.login(username="root", password=PASSWORD)
    policy = _directives(client.get("/admin/")[HEADER])
    assert policy["style-src"] == "'self' 'unsafe-inline'"
    assert re.fullmatch(r"'self' 'nonce-[^']+'", policy["script-src"])


def test_no_template_has_inline_script_handlers_or_styles() -> None:
    """Behaviour lives in static/js and looks in static/css: an inline handler, style
    attribute, <style> or <script> without src is refused by the policy."""
    offenders = []
    for path in TEMPLATES.rglob("*.html"):
        if path.relative_to(TEMPLATES).as_posix() == "evidence/pack.html":
            continue  # the offline printable file; served with its own script-less policy
        text = path.read_text()
        for pattern in (
            r"\son[a-z]+\s*=",
            r"\sstyle\s*=",
            r"<style[\s>]",
            r"<script(?![^>]*\ssrc=)[^>]*>",
            r"javascript:",
            r"hx-on",
        ):
            for match in re.finditer(pattern, text):
                offenders.append(f"{path.relative_to(TEMPLATES)}: {match.group(0)!r}")
    assert offenders == []
