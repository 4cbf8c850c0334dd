"""The evidence pack over HTTP: the API download, the page download, the printable page
and the link on the version page."""

import hashlib
import io
import json
import zipfile

import pytest
from django.test import Client

from apps.audit.models import AuditEvent
from tests.factories import PASSWORD, UserFactory

pytestmark = pytest.mark.django_db
API = "/api/v1/squads/acme/prompts/writer/versions/2/evidence"
PAGE = "/squads/acme/prompts/writer/versions/2/evidence"


def _client(username: str) -> Client:
    client = Client()
    assert client.login(username=UserFactory(username=username).username, password=PASSWORD)
    return client


def _names(content: bytes) -> set[str]:
    with zipfile.ZipFile(io.BytesIO(content)) as archive:
        return set(archive.namelist())


def test_api_download(flow, api_as):
    response = api_as("compliance").call("GET", API)
    assert response.status_code == 200, response.content
    assert response["Content-Type"] == "application/zip"
    disposition = response["Content-Disposition"]
    assert disposition.startswith('attachment; filename="evidence-acme-writer-v2-')
    assert _names(response.content) == {"evidence.json", "evidence.html", "manifest.json"}
    event = AuditEvent.objects.latest("sequence")
    assert event.action == "evidence.exported"
    assert event.data["sha256"] == hashlib.sha256(response.content).hexdigest()


@pytest.mark.parametrize(("username", "status"), [("engineer", 403), ("outsider", 404)])
def test_api_refusals(flow, api_as, username, status):
    client = api_as(username)
    before = AuditEvent.objects.count()
    response = client.call("GET", API)
    assert response.status_code == status, response.content
    assert "detail" in response.json()
    assert AuditEvent.objects.count() == before


def test_api_missing_version_is_404(flow, api_as):
    response = api_as("compliance").call("GET", API.replace("/versions/2/", "/versions/9/"))
    assert response.status_code == 404
    assert response.json()["field"] == "version"


def test_page_download(flow):
    response = _client("owner").get(PAGE + ".zip")
    assert response.status_code == 200
    assert response["Content-Disposition"].startswith("attachment; ")
    assert _names(response.content) == {"evidence.json", "evidence.html", "manifest.json"}


def test_printable_page_inline(flow):
    response = _client("compliance").get(PAGE)
    assert response.status_code == 200
    assert response["Content-Type"].startswith("text/html")
    assert "Content-Disposition" not in response
    html = response.content.decode()
    assert "@media print" in html and "<script" not in html
    assert "Evidence pack: writer v2" in html
    event = AuditEvent.objects.latest("sequence")
    assert event.action == "evidence.viewed"
    assert event.data["sha256"] == hashlib.sha256(response.content).hexdigest()
    assert response["X-Evidence-SHA256"] == event.data["sha256"]


def test_page_refused_for_members_without_the_permission(flow):
    assert _client("sme").get(PAGE).status_code == 403
    assert _client("sme").get(PAGE + ".zip").status_code == 403
    assert _client("outsider").get(PAGE).status_code == 404


def test_version_page_links_for_those_who_may_export(flow):
    version_page = "/squads/acme/prompts/writer/versions/2"
    html = _client("compliance").get(version_page).content.decode()
    assert f'href="{PAGE}.zip"' in html and "Download evidence pack" in html
    assert f'href="{PAGE}"' in html
    html = _client("engineer").get(version_page).content.decode()
    assert "Download evidence pack" not in html


def test_json_document_in_the_download_matches_the_page_version(flow, api_as):
    response = api_as("owner").call("GET", API)
    with zipfile.ZipFile(io.BytesIO(response.content)) as archive:
        doc = json.loads(archive.read("evidence.json"))
    assert doc["version"]["number"] == 2 and doc["squad"]["slug"] == "acme"
