"""A bounded schemathesis run over the whole OpenAPI document, in process (WSGI), with
an owner's token: no 5xx, and no response that contradicts the document."""

from collections.abc import Iterator

import pytest
import schemathesis
from django.core.signals import request_finished, request_started
from django.db import close_old_connections
from hypothesis import HealthCheck, settings
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from apps.squads import services as squad_services
from studio.api import api
from studio.wsgi import application
from tests.factories import UserFactory, make_squad

pytestmark = pytest.mark.fuzz

schema = schemathesis.openapi.from_dict(api.get_openapi_schema(path_prefix="/api/v1/"))
schema.app = application  # in process, through the WSGI application
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
]


@pytest.fixture
def owner_token(db) -> Iterator[str]:
    owner = UserFactory(username="fuzz-owner")
    make_squad(owner=owner, slug="acme")
    _, secret = squad_services.api_token_create(actor=owner, name="schemathesis")
    # As django.test.Client does: the WSGI handler would close the test's transaction.
    request_started.disconnect(close_old_connections)
    request_finished.disconnect(close_old_connections)
    yield secret
    request_started.connect(close_old_connections)
    request_finished.connect(close_old_connections)


@schema.parametrize()
@settings(
    max_examples=3,
    deadline=None,
    derandomize=True,
    suppress_health_check=list(HealthCheck),
)
@pytest.mark.django_db
def test_the_api_keeps_its_document(case, owner_token):
    # The document's security scheme makes schemathesis invent credentials; use real ones.
    case.headers = {**(case.headers or {}), "Authorization": f"Bearer {owner_token}"}
    if "squad" in (case.path_parameters or {}):
        case.path_parameters["squad"] = "acme"  # past the 404 of an unknown squad
    case.call_and_validate(checks=CHECKS)
