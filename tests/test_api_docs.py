"""The OpenAPI document and docs page: public in development, signed-in only when
STUDIO_API_DOCS_PUBLIC is off (the production default, tests/test_settings.py)."""

import pytest
from django.test import Client

from tests.factories import PASSWORD, UserFactory

pytestmark = pytest.mark.django_db


def test_private_docs_need_a_session_or_a_token(settings, api_as) -> None:
    settings.STUDIO_API_DOCS_PUBLIC = False
    anonymous = Client()
    document = anonymous.get("/api/v1/openapi.json")
    assert document.status_code == 401 and "Sign in" in document.json()["detail"]
    assert b'"paths"' not in document.content
    page = anonymous.get("/api/v1/docs")
    assert page.status_code == 302 and page["Location"].startswith("/login/?next=")
    bad_token = anonymous.get("/api/v1/openapi.json", headers={"Authorization": "Bearer stu_x"})
    assert bad_token.status_code == 401

    assert api_as("reader").call("GET", "/api/v1/openapi.json").status_code == 200
    UserFactory(username="browser")
    session = Client()
    assert session.login(username="browser", password=PASSWORD)
    assert session.get("/api/v1/openapi.json").status_code == 200
    assert session.get("/api/v1/docs").status_code == 200


def test_public_docs_in_development(settings) -> None:
    settings.STUDIO_API_DOCS_PUBLIC = True
    assert Client().get("/api/v1/openapi.json").status_code == 200
    page = Client().get("/api/v1/docs")
    assert page.status_code == 200
    # Swagger UI from Studio's own static files, never a CDN (the CSP allows no remote origin).
    assert b"cdn." not in page.content and b"/static/ninja/swagger-ui-bundle.js" in page.content
