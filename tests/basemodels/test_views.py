"""The registry page and API: everyone signed in reads, staff register; hostile input
answers 4xx naming the field."""

import pytest
from django.test import Client

from apps.basemodels.models import BaseModelVersion
from apps.squads import services as squads
from tests.conftest import ApiClient
from tests.factories import PASSWORD, UserFactory


def client_for(user) -> Client:
    client = Client()
    assert client.login(username=user.username, password=PASSWORD)
    return client


@pytest.mark.django_db
def test_the_page_lists_the_default_model_and_only_staff_register(squad):
    page = client_for(UserFactory(username="viewer")).get("/base-models/")
    assert page.status_code == 200
    body = page.content.decode()
    assert "smollm2-135m-instruct" in body and "LlamaForCausalLM" in body
    assert "Apache-2.0" in body and "Register a model" not in body
    refused = client_for(UserFactory(username="viewer")).post(
        "/base-models/", {"name": "x", "source_kind": "folder", "source": "x"}
    )
    assert refused.status_code == 403
    staff = client_for(UserFactory(username="staffer", is_staff=True))
    assert "Register a model" in staff.get("/base-models/").content.decode()
    bad = staff.post("/base-models/", {"name": "x", "source_kind": "folder", "source": "../x"})
    assert bad.status_code == 422 and "without &#x27;..&#x27;" in bad.content.decode()
    ok = staff.post(
        "/base-models/", {"name": "byo", "source_kind": "hub", "source": "Org/Model-1B"}
    )
    assert ok.status_code == 302
    version = BaseModelVersion.objects.get(model__name="byo")
    assert (version.status, version.source_kind, version.number) == ("pending", "hub", 1)


@pytest.mark.django_db
def test_the_api_refuses_hostile_input_by_field(squad):
    _, secret = squads.api_token_create(
        actor=UserFactory(username="staffer", is_staff=True), name="t"
    )
    api = ApiClient(secret)
    cases = [
        ({"name": "a\x00b", "source_kind": "folder", "source": "x"}, "name"),
        ({"name": "ok", "source_kind": "zip", "source": "x"}, "source_kind"),
        ({"name": "ok", "source_kind": "folder", "source": "/etc/passwd"}, "source"),
        ({"name": "ok", "source_kind": "hub", "source": "not a hub id"}, "source"),
        ({"name": "ok", "source_kind": "gguf", "source": "model.bin"}, "source"),
        (
            {
                "name": "ok",
                "source_kind": "folder",
                "source": "x",
                "expected_sha256": {"model.safetensors": "abc"},
            },
            "expected_sha256.model.safetensors",
        ),
        ({"name": "ok", "source_kind": "folder", "source": "x", "notes": "n" * 10_001}, "notes"),
    ]
    for payload, field in cases:
        response = api.call("POST", "/api/v1/base-models", payload)
        assert response.status_code == 422, (payload, response.content)
        assert response.json()["field"] == field, payload
    assert not BaseModelVersion.objects.filter(model__name="ok").exists()
    listed = api.call("GET", "/api/v1/base-models").json()
    assert listed[0]["name"] == "smollm2-135m-instruct"
    assert listed[0]["current"]["manifest_sha256"]
    assert api.call("GET", "/api/v1/base-models/nope").status_code == 404
    changed = api.call(
        "PATCH", "/api/v1/base-models/smollm2-135m-instruct", {"licence": "Apache-2.0 (checked)"}
    )
    assert changed.status_code == 200 and changed.json()["number"] == 2
    assert changed.json()["manifest_sha256"] == listed[0]["current"]["manifest_sha256"]


@pytest.mark.django_db
def test_a_nul_or_unknown_base_model_is_a_422_naming_the_field(squad):
    _, secret = squads.api_token_create(actor=UserFactory(username="owner"), name="t")
    api = ApiClient(secret)
    for name in ("a\x00b", "x" * 5000, "never-registered"):
        response = api.call(
            "POST",
            "/api/v1/squads/acme/targets",
            {"name": "mine", "kind": "local", "base_model": name},
        )
        assert response.status_code == 422, response.content
        assert response.json()["field"] == "base_model"
    assert api.call("GET", "/api/v1/base-models/a%00b").status_code in (404, 422)
