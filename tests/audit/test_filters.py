"""The squad audit page's filters and its export links (issue 16, defect 2)."""

import pytest
from django.test import Client

from tests.factories import PASSWORD

pytestmark = pytest.mark.django_db


def _client(username: str) -> Client:
    client = Client()
    assert client.login(username=username, password=PASSWORD)
    return client


def test_blank_filters_count_as_unset_in_the_api(squad):
    client = _client("compliance")
    for path in ("/api/v1/audit/export", "/api/v1/audit/events"):
        blank = client.get(f"{path}?format=csv&squad=acme&actor=&since=&until=&action=")
        assert blank.status_code == 200, blank.content[:300]
    exported = client.get("/api/v1/audit/export?format=jsonl&squad=acme&since=+&actor=")
    assert exported.status_code == 200
    lines = b"".join(exported.streaming_content).decode().splitlines()
    assert lines and all('"squad.' in line or '"audit.' in line for line in lines)
    # A filter that is set but wrong still says which one.
    bad = client.get("/api/v1/audit/export?squad=acme&since=yesterday")
    assert bad.status_code == 422 and b"since" in bad.content


def test_export_links_carry_only_the_filters_that_are_set(squad):
    page = _client("compliance").get("/audit/acme/?action=squad.*&actor=&since=&until=")
    body = page.content.decode()
    assert page.status_code == 200
    csv_link = "/api/v1/audit/export?format=csv&amp;squad=acme&amp;action=squad.%2A"
    assert f'href="{csv_link}" download' in body
    assert (
        "actor=&" not in body
        and "since=&" not in body
        and "until=" not in body.split("Export these events")[1].split("</p>")[0]
    )
    # The link's target answers with a file.
    href = csv_link.replace("&amp;", "&")
    exported = _client("compliance").get(href)
    assert exported.status_code == 200
    assert exported["Content-Disposition"].startswith("attachment;")


@pytest.mark.parametrize(("username", "status"), [("owner", 200), ("compliance", 200)])
def test_owners_and_compliance_leads_read_the_squad_audit_log(squad, username, status):
    assert _client(username).get("/audit/acme/").status_code == status


@pytest.mark.parametrize("username", ["engineer", "sme", "viewer"])
def test_other_members_are_refused_and_not_shown_the_link(squad, username):
    client = _client(username)
    assert client.get("/audit/acme/").status_code == 403
    assert b"/audit/acme/" not in client.get("/squads/acme/").content


@pytest.mark.parametrize("name", ["since", "until"])
def test_an_impossible_time_in_a_page_filter_is_named_not_a_500(squad, name):
    # parse_datetime raises ValueError (not None) for hour 25; the API already says 422.
    page = _client("compliance").get(f"/audit/acme/?{name}=2026-12-06T25:00:00")
    assert page.status_code == 422
    body = page.content.decode()
    assert f"{name}: &#x27;2026-12-06T25:00:00&#x27; is not a date and time" in body
    assert "hour must be in 0..23" in body
