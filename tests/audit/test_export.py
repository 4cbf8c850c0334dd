import csv
import io
import json
from datetime import timedelta

import pytest
from django.test import Client
from django.utils import timezone

from apps.audit.models import AuditEvent
from tests.factories import PASSWORD, UserFactory, make_squad

pytestmark = pytest.mark.django_db


def _body(response) -> str:
    return b"".join(response.streaming_content).decode()


@pytest.fixture
def two_squads(squad):
    make_squad(slug="other", owner=UserFactory(username="other-owner"))
    return squad


def test_compliance_exports_only_their_squads_events_as_jsonl(two_squads, api_as):
    response = api_as("compliance").call("GET", "/api/v1/audit/export?squad=acme&format=jsonl")
    assert response.status_code == 200
    assert response["Content-Type"].startswith("application/x-ndjson")
    assert response["Content-Disposition"].startswith('attachment; filename="audit-')
    rows = [json.loads(line) for line in _body(response).splitlines()]
    assert rows and {r["squad_id"] for r in rows} == {two_squads.pk}
    assert [r["sequence"] for r in rows] == sorted(r["sequence"] for r in rows)
    assert {"hash", "prev_hash", "data", "actor_label", "ip"} <= set(rows[0])
    # The export itself is on the record.
    assert AuditEvent.objects.filter(action="audit.exported", actor_label="compliance").exists()


def test_csv_export_filters_by_action_actor_and_time(two_squads, api_as):
    since = (timezone.now() - timedelta(hours=1)).isoformat()
    response = api_as("compliance").call(
        "GET",
        f"/api/v1/audit/export?squad=acme&format=csv&action=squad.member_*&actor=owner"
        f"&since={since.replace('+', '%2B')}",
    )
    assert response.status_code == 200
    rows = list(csv.DictReader(io.StringIO(_body(response))))
    assert len(rows) == 5  # owner + four members added by 'owner'
    assert {r["action"] for r in rows} == {"squad.member_added"}
    assert json.loads(rows[1]["data"])["username"]
    future = (timezone.now() + timedelta(hours=1)).isoformat().replace("+", "%2B")
    empty = api_as("compliance").call(
        "GET", f"/api/v1/audit/export?squad=acme&format=csv&since={future}"
    )
    assert list(csv.DictReader(io.StringIO(_body(empty)))) == []


def test_since_after_until_is_refused(squad, api_as):
    response = api_as("compliance").call(
        "GET",
        "/api/v1/audit/events?squad=acme&since=2030-01-02T00:00:00Z&until=2030-01-01T00:00:00Z",
    )
    assert response.status_code == 422
    assert response.json()["field"] == "since"


def test_staff_export_everything_including_events_outside_squads(two_squads, api_as):
    staff = UserFactory(username="platform", is_staff=True)
    from apps.squads.services import api_token_create
    from tests.conftest import ApiClient

    _, secret = api_token_create(actor=staff, name="ops")
    rows = [
        json.loads(line)
        for line in _body(ApiClient(secret).call("GET", "/api/v1/audit/export")).splitlines()
    ]
    squads = {r["squad_id"] for r in rows}
    assert None in squads and len(squads - {None}) == 2


def test_events_api_paginates(squad, api_as):
    page = api_as("compliance").call("GET", "/api/v1/audit/events?squad=acme&limit=2&offset=1")
    body = page.json()
    assert body["count"] == AuditEvent.objects.filter(squad=squad).count()
    assert [e["sequence"] for e in body["items"]] == [2, 3]
    assert body["items"][0]["actor"] == "owner"


def test_export_streams_without_loading_everything(squad, api_as, django_assert_max_num_queries):
    """The CSV export reads in chunks: queries stay flat as events grow."""
    response = api_as("compliance").call("GET", "/api/v1/audit/export?squad=acme&format=csv")
    with django_assert_max_num_queries(2):
        body = _body(response)
    assert body.count("\n") >= 6


def test_admin_export_action_and_read_only_admin(squad):
    admin = UserFactory(username="root", is_staff=True, is_superuser=True)
    client = Client()
    assert client.login(username=admin.username, password=PASSWORD)
    ids = list(AuditEvent.objects.values_list("pk", flat=True)[:3])
    response = client.post(
        "/admin/audit/auditevent/",
        {"action": "export_jsonl", "_selected_action": [str(i) for i in ids]},
    )
    assert response.status_code == 200
    assert len(_body(response).splitlines()) == 3
    page = client.get(f"/admin/audit/auditevent/{ids[0]}/change/")
    assert page.status_code == 200 and b"Save" not in page.content
    assert client.post(f"/admin/audit/auditevent/{ids[0]}/delete/").status_code == 403
