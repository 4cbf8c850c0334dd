"""A compliance lead downloads the evidence pack of a version that went through the whole
flow (tests/evidence/conftest.py: reviewed, evaluated, generations with governance
findings, moved to production) from the version page, in a real browser, and the zip
holds what it should."""

import hashlib
import json
import zipfile

import pytest
from playwright.sync_api import expect

from tests.evidence.conftest import data_dir, fake_server, flow  # noqa: F401  (fixtures)
from tests.factories import PASSWORD

pytestmark = pytest.mark.browser
VERSION_PAGE = "/squads/acme/prompts/writer/versions/2"


def test_compliance_lead_downloads_the_evidence_pack(page, login, flow):  # noqa: F811
    login(page, "compliance", PASSWORD)
    page.goto(VERSION_PAGE)
    expect(page.get_by_role("heading", name="writer v2")).to_be_visible()

    with page.expect_download() as info:
        page.get_by_role("link", name="Download evidence pack").click()
    download = info.value
    assert download.suggested_filename.startswith("evidence-acme-writer-v2-")
    assert download.suggested_filename.endswith(".zip")

    with zipfile.ZipFile(download.path()) as archive:
        files = {name: archive.read(name) for name in archive.namelist()}
    assert set(files) == {"evidence.json", "evidence.html", "manifest.json"}
    manifest = json.loads(files["manifest.json"])
    for entry in manifest["files"]:
        assert entry["sha256"] == hashlib.sha256(files[entry["path"]]).hexdigest()
    doc = json.loads(files["evidence.json"])
    assert doc["generated_by"] == "compliance"
    assert doc["version"]["number"] == 2
    assert doc["version"]["content_hash"] == flow.v2.content_hash
    assert doc["diff"]["base"]["number"] == 1
    [review] = doc["reviews"]
    assert review["state"] == "approved"
    assert {(d["reviewer"], d["is_current"]) for d in review["decisions"]} == {
        ("sme", False),
        ("sme", True),
        ("compliance", True),
    }
    assert [r["id"] for r in doc["evals"]["runs"]] == [flow.run_v2.pk]
    assert doc["governance"]["findings"]["blocked_generations"] == 1
    assert doc["labels"][0]["to_version"] == 2
    assert doc["audit"]["verification"]["status"] == "ok"
    assert "@media print" in files["evidence.html"].decode()

    # The printable page opens in the browser too.
    page.goto(VERSION_PAGE + "/evidence")
    expect(page.get_by_role("heading", name="Evidence pack: writer v2")).to_be_visible()
    expect(page.locator("#chain-status")).to_have_text("ok")


def test_engineer_sees_no_evidence_link(page, login, flow):  # noqa: F811
    login(page, "engineer", PASSWORD)
    page.goto(VERSION_PAGE)
    expect(page.get_by_role("heading", name="writer v2")).to_be_visible()
    expect(page.get_by_role("link", name="Download evidence pack")).to_have_count(0)
