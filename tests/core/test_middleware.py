import pytest
from django.contrib.auth import get_user_model

from apps.core.validation import nul_path
from apps.squads.models import Squad

pytestmark = pytest.mark.django_db


def test_nul_in_a_query_string_is_a_422_naming_it(squad, api_as):
    viewer = api_as("viewer")
    for query in ("q=a%00b", "tag=%00", "q=ok&label=x%00"):
        response = viewer.client.get(f"/api/v1/squads/acme/prompts?{query}", headers=viewer.headers)
        assert response.status_code == 422
        assert response.json()["field"] in ("q", "tag", "label")
    ok = viewer.client.get("/api/v1/squads/acme/prompts?q=a", headers=viewer.headers)
    assert ok.status_code == 200


def test_nul_in_a_json_body_names_the_nested_field(squad, api_as):
    response = api_as("owner").call(
        "PATCH", "/api/v1/squads/acme", raw='{"name": "ok", "x": [{"y": "\\u0000"}]}'
    )
    assert response.status_code == 422
    assert response.json()["field"] == "x[0].y"
    # An escaped backslash followed by "u0000" is text, not a NUL.
    fine = api_as("owner").call("PATCH", "/api/v1/squads/acme", raw='{"description": "\\\\u0000"}')
    assert fine.status_code == 200, fine.content
    assert Squad.objects.get(slug="acme").description == "\\u0000"


def test_nul_in_a_form_is_a_400_page_and_nothing_is_saved(client, squad):
    client.force_login(get_user_model().objects.get(username="owner"))
    response = client.post("/squads/acme/settings", {"name": "Ac\x00me", "description": "d"})
    assert response.status_code == 400
    assert b"name contains a NUL character" in response.content
    assert Squad.objects.get(slug="acme").name == "Acme"


def test_nul_path_walks_values_and_keys():
    assert nul_path({"a": ["ok", {"b": "x\x00"}]}, "") == "a[1].b"
    assert nul_path({"k\x00": 1}, "") == "k\x00"
    assert nul_path({"a": ["ok"]}, "") is None


def test_json_text_in_a_form_field_carrying_nul_is_refused(client, squad):
    """The playground's variables field is JSON: `\\u0000` in it would reach jsonb."""
    client.force_login(get_user_model().objects.get(username="owner"))
    response = client.post(
        "/squads/acme/prompts/any/run", {"variables": '{"topic": "a\\u0000b"}', "label": ""}
    )
    assert response.status_code == 400
    assert b"variables contains a NUL character" in response.content
    # The same escape in text that is not JSON is only text.
    fine = client.post("/squads/acme/settings", {"name": "Acme", "description": "a \\u0000 b"})
    assert fine.status_code in (200, 302)
    assert Squad.objects.get(slug="acme").description == "a \\u0000 b"


@pytest.mark.parametrize("content_type", [None, "text/plain", "application/x-www-form-urlencoded"])
def test_nul_in_an_api_body_sent_without_a_json_content_type_is_refused(
    squad, api_as, content_type
):
    """django-ninja reads the body as JSON whatever the Content-Type says, so the NUL
    check must too (it was stored, and a 500 on PostgreSQL)."""
    owner = api_as("owner")
    headers = dict(owner.headers)
    kwargs = {"content_type": content_type} if content_type else {"content_type": ""}
    response = owner.client.patch(
        "/api/v1/squads/acme", '{"description": "nul\\u0000here"}', headers=headers, **kwargs
    )
    assert response.status_code == 422, response.content
    assert response.json()["field"] == "description"
    assert "\x00" not in Squad.objects.get(slug="acme").description
