"""Properties of the whole REST API, walked from its own OpenAPI document, so a new
operation is covered the day it is added."""

import re
from typing import Any

import pytest
from django.contrib.auth import get_user_model
from django.test import Client

from apps.squads import services as squad_services
from studio.api import api

pytestmark = pytest.mark.django_db
UNSAFE = {"post", "put", "patch", "delete"}


def _document() -> dict[str, Any]:
    return api.get_openapi_schema(path_prefix="/api/v1/")


def operations() -> list[tuple[str, str, dict[str, Any]]]:
    return [
        (method, path, operation)
        for path, item in _document()["paths"].items()
        for method, operation in item.items()
        if method in {"get", "head", *UNSAFE}
    ]


def send(client: Client, method: str, path: str, operation: dict[str, Any]):
    url = concrete(path, operation)
    if method in UNSAFE:
        return getattr(client, method)(url, data="{}", content_type="application/json")
    return getattr(client, method)(url)


def concrete(path: str, operation: dict[str, Any]) -> str:
    """The path with every parameter filled: the test squad, a slug, or a row id."""
    kinds = {
        p["name"]: p.get("schema", {}).get("type")
        for p in operation.get("parameters", [])
        if p["in"] == "path"
    }

    def value(match: re.Match) -> str:
        name = match.group(1)
        if name == "squad":
            return "acme"
        return "1" if kinds.get(name) == "integer" else "x"

    return re.sub(r"\{(\w+)\}", value, path)


def _operation_ids() -> list[str]:
    return [f"{method.upper()} {path}" for method, path, _ in operations()]


@pytest.fixture
def token_client(squad) -> Client:
    owner = get_user_model().objects.get(username="owner")
    _, secret = squad_services.api_token_create(actor=owner, name="walk")
    return Client(enforce_csrf_checks=True, headers={"Authorization": f"Bearer {secret}"})


@pytest.mark.parametrize(("method", "path", "operation"), operations(), ids=_operation_ids())
def test_a_bearer_token_never_meets_csrf(token_client, method, path, operation):
    """Defect 2 of issue 14: the runtime fetch's plain Django view answered PATCH and
    POST …/check with Django's HTML 'CSRF verification failed' page."""
    response = send(token_client, method, path, operation)
    assert response.status_code < 500, response.content[:300]
    assert response["Content-Type"].startswith("application/json") or response.status_code in (
        204,
        304,
    ), (response.status_code, response["Content-Type"], response.content[:300])
    assert b"CSRF" not in response.content


@pytest.mark.parametrize(
    ("method", "path", "operation"),
    [op for op in operations() if op[0] in UNSAFE],
    ids=[i for i, op in zip(_operation_ids(), operations(), strict=True) if op[0] in UNSAFE],
)
def test_a_session_without_the_csrf_token_gets_the_same_json_403(squad, method, path, operation):
    client = Client(enforce_csrf_checks=True)
    client.force_login(get_user_model().objects.get(username="owner"))
    response = send(client, method, path, operation)
    assert response.status_code == 403
    assert response["Content-Type"].startswith("application/json")
    assert "CSRF verification failed" in response.json()["detail"]
