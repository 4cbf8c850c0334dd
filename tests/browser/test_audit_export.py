"""The squad audit log's export after filtering downloads a file (issue 16, defect 2)."""

import csv

import pytest
from django.core.management import call_command
from playwright.sync_api import expect

from apps.squads.management.commands.seed_demo import DEMO_PASSWORD

pytestmark = pytest.mark.browser


@pytest.mark.parametrize("username", ["carmen", "olivia"])
def test_filtered_audit_export_downloads_the_matching_events(page, login, live_server, username):
    call_command("seed_demo")
    login(page, username, DEMO_PASSWORD)
    page.goto("/squads/demo/")
    page.get_by_role("navigation", name="Demo squad").get_by_role("link", name="Audit log").click()
    expect(page.get_by_role("heading", name="Audit log")).to_be_visible()
    # Filter on the action only: actor, since and until are sent empty.
    page.get_by_label("Action").fill("squad.member_*")
    page.get_by_role("button", name="Filter").click()
    expect(page.get_by_label("Action")).to_have_value("squad.member_*")
    assert "actor=&since=&until=" in page.url

    with page.expect_download() as download_info:
        page.get_by_role("link", name="CSV").click()
    download = download_info.value
    assert download.failure() is None
    assert download.suggested_filename.startswith("audit-")
    assert download.suggested_filename.endswith(".csv")
    with open(download.path(), encoding="utf-8", newline="") as exported:
        rows = list(csv.DictReader(exported))
    actions = {row["action"] for row in rows}
    assert actions == {"squad.member_added"}, actions
    assert len(rows) == 5  # one per demo member
