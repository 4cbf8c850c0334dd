"""Numbers typed into forms and query strings: digits that str.isdigit() accepts but
int() refuses ("²"), or more digits than int() converts or the database holds, are
not ids (they were 500s: ValueError, or "bigint out of range" on PostgreSQL)."""

import pytest
from django.test import Client, RequestFactory

from apps.core.exceptions import ValidationFailed
from apps.reviews.views import approvals, queues
from tests.factories import PASSWORD

HOSTILE = ["²", "1" * 5000, "9223372036854775808"]


@pytest.mark.parametrize("raw", HOSTILE)
def test_generation_ids_typed_into_a_queue_are_refused_naming_the_field(raw):
    with pytest.raises(ValidationFailed) as info:
        queues._parse_ids(f"1, {raw}")
    assert info.value.field == "generations"


@pytest.mark.parametrize("raw", [f"{HOSTILE[0]}.5", f"2.{HOSTILE[0]}", f"{HOSTILE[1]}.1"])
def test_a_comment_anchor_that_is_not_a_line_is_ignored(raw):
    request = RequestFactory().get("/", {"comment_on": raw})
    assert approvals._anchor_from_query(request) is None


@pytest.mark.django_db
@pytest.mark.parametrize("raw", HOSTILE)
def test_marking_notifications_read_ignores_ids_that_are_not_ids(squad, raw):
    client = Client()
    assert client.login(username="sme", password=PASSWORD)
    response = client.post("/notifications/read", {"id": [raw, "7"]})
    assert response.status_code == 302
