"""Properties of the whole REST API, walked from its own OpenAPI document, so a new
operation is covered the day it is added."""

import re
from typing import Any, get_args

import pytest
from django.contrib.auth import get_user_model
from django.test import Client
from ninja.params.models import ParamModel
from pydantic import BaseModel

from apps.squads import services as squad_services
from studio.api import ROUTERS, api

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


@pytest.mark.parametrize(("method", "path", "operation"), operations(), ids=_operation_ids())
def test_nul_characters_are_refused_naming_the_field(token_client, method, path, operation):
    """Defect 6 of issue 14: PostgreSQL refuses NUL in text and jsonb, which was a 500."""
    url = concrete(path, operation)
    if method in UNSAFE:
        response = getattr(token_client, method)(
            url, data='{"name": "a\\u0000b"}', content_type="application/json"
        )
        field = "name"
    else:
        response = getattr(token_client, method)(url, {"q": "a\x00b"})
        field = "q"
    assert response.status_code == 422, response.content[:300]
    assert response.json()["field"] == field
    assert "NUL" in response.json()["detail"]


def _unbounded_integers(schema: Any, where: str, components: dict, seen: set) -> list[str]:
    if not isinstance(schema, dict):
        return []
    if "$ref" in schema:
        name = schema["$ref"].rsplit("/", 1)[-1]
        if name in seen:
            return []
        seen.add(name)
        return _unbounded_integers(components[name], name, components, seen)
    found = []
    if schema.get("type") == "integer" and not {"minimum", "maximum"} <= schema.keys():
        found.append(where)
    for key in ("anyOf", "oneOf", "allOf"):
        for option in schema.get(key, []):
            found += _unbounded_integers(option, where, components, seen)
    for name, option in (schema.get("properties") or {}).items():
        found += _unbounded_integers(option, f"{where}.{name}", components, seen)
    for key in ("items", "additionalProperties"):
        found += _unbounded_integers(schema.get(key), f"{where}[]", components, seen)
    return found


def test_every_integer_an_operation_reads_is_bounded():
    """Defect 8 of issue 14: ?limit=9223372036854775808 was a 500 (bigint out of range)."""
    document = _document()
    components = document["components"]["schemas"]
    unbounded = []
    for method, path, operation in operations():
        where = f"{method.upper()} {path}"
        for parameter in operation.get("parameters", []):
            unbounded += _unbounded_integers(
                parameter.get("schema"), f"{where} {parameter['name']}", components, set()
            )
        for content in operation.get("requestBody", {}).get("content", {}).values():
            unbounded += _unbounded_integers(content.get("schema"), where, components, set())
    assert unbounded == []


HUGE = "9223372036854775808"


def _integer_parameters(operation: dict[str, Any]) -> list[dict[str, Any]]:
    return [
        p
        for p in operation.get("parameters", [])
        if p["in"] in ("path", "query")
        and "integer"
        in {p.get("schema", {}).get("type")}
        | {o.get("type") for o in p.get("schema", {}).get("anyOf", [])}
    ]


WITH_INTEGERS = [op for op in operations() if _integer_parameters(op[2])]


@pytest.mark.parametrize(
    ("method", "path", "operation"),
    WITH_INTEGERS,
    ids=[f"{m.upper()} {p}" for m, p, _ in WITH_INTEGERS],
)
def test_a_huge_integer_parameter_is_a_4xx(token_client, method, path, operation):
    for parameter in _integer_parameters(operation):
        name = parameter["name"]
        url = concrete(path.replace("{" + name + "}", HUGE), operation)
        query = {name: HUGE} if parameter["in"] == "query" else {}
        if method in UNSAFE:
            url += "".join(f"?{k}={v}" for k, v in query.items())
            response = getattr(token_client, method)(
                url, data="{}", content_type="application/json"
            )
        else:
            response = getattr(token_client, method)(url, query)
        assert response.status_code in (404, 422), (name, response.content[:300])


def _models(annotation: Any, found: dict[str, set[type]]) -> None:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        wrapper = issubclass(annotation, ParamModel) or annotation.__name__ == "NinjaResponseSchema"
        names = found.setdefault(annotation.__name__, set())
        if annotation in names:
            return
        if not wrapper:  # ninja's own per-operation wrappers are flattened, never components
            names.add(annotation)
        for info in annotation.model_fields.values():
            _models(info.annotation, found)
        return
    for arg in get_args(annotation):
        _models(arg, found)


def test_every_schema_name_is_unique():
    """Defect 11 of issue 14: two schemas with one name overwrite each other in the
    document (PolicyIn of reviews and of governance): each must have its own name."""
    found: dict[str, set[type]] = {}
    for _, router in ROUTERS:
        for view in router.path_operations.values():
            for operation in view.operations:
                for model in operation.models:
                    _models(model, found)
                for model in (operation.response_models or {}).values():
                    _models(model, found)
    duplicates = {
        name: sorted(f"{m.__module__}.{m.__qualname__}" for m in models)
        for name, models in found.items()
        if len(models) > 1
    }
    assert duplicates == {}


def test_the_document_lists_error_answers():
    document = _document()
    assert "ErrorOut" in document["components"]["schemas"]
    for method, path, operation in operations():
        assert {"400", "401", "403", "422"} <= operation["responses"].keys(), (method, path)
        if method in UNSAFE:
            assert "409" in operation["responses"], (method, path)
        assert "x-studio-errors" not in operation
    generate = document["paths"]["/api/v1/squads/{squad}/prompts/{slug}/generate"]["post"]
    assert "429" in generate["responses"]


@pytest.mark.parametrize(
    ("method", "path"),
    [("PUT", "/api/v1/"), ("GET", "/api/v1/nope"), ("POST", "/api/v1/squads/acme/nope")],
)
def test_an_address_no_operation_serves_is_a_json_404_without_a_csrf_check(
    squad, api_as, method, path
):
    owner = api_as("owner")
    client = Client(enforce_csrf_checks=True)
    response = client.generic(method, path, headers=owner.headers)
    assert response.status_code == 404
    assert response.json()["detail"] == f"No API operation answers {method} {path}."
