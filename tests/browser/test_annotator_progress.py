"""The annotator's progress line and live edit diff in a real browser: "1 of 2 · 2 left",
typing in the output editor redraws the word diff against the original, and after
approving the next item shows "2 of 2 · 1 left"."""

import pytest
from django.contrib.auth import get_user_model
from playwright.sync_api import expect

from apps.reviews.services import queues
from apps.squads import services

pytestmark = pytest.mark.browser


@pytest.fixture
def queue(db):
    users = get_user_model().objects
    owner = users.create_user("olivia", password="pw-olivia-123")
    squad = services.squad_create(actor=owner, name="Demo", slug="demo")
    services.membership_add(
        actor=owner,
        squad=squad,
        user=users.create_user("sam", password="pw-sam-123"),
        roles=["sme"],
    )
    queue = queues.review_queue_create(
        actor=owner, squad=squad, name="Answers", rubric=[], overlap=1, annotator_roles=["sme"]
    )
    queues.review_items_add_external(
        actor=owner,
        queue=queue,
        items=[
            {
                "inputs": {"customer_name": "Ada", "question": "Where is my parcel?"},
                "output": "It left the depot today.",
            },
            {
                "inputs": {"customer_name": "Bo", "question": "Can I return it?"},
                "output": "Yes, within 30 days.",
            },
        ],
    )
    return queue


def test_progress_and_live_diff(page, login, queue):
    login(page, "sam", "pw-sam-123")
    page.goto("/squads/demo/review-queues/answers/annotate")
    expect(page.locator("#annotate-progress")).to_contain_text("1 of 2 · 2 left")
    inputs = page.locator(".rq-input-fields")
    expect(inputs).to_contain_text("Customer name")
    expect(inputs).to_contain_text("Where is my parcel?")
    editor = page.get_by_label("Output (edit it to correct it — e)")
    editor.fill("It left the warehouse today.")
    diff = page.locator("#output-diff")
    expect(diff.locator("del")).to_have_text("deleted: depot")
    expect(diff.locator("ins")).to_have_text("inserted: warehouse")
    page.get_by_role("button", name="Approve a").click()
    expect(page.locator("#annotate-progress")).to_contain_text("2 of 2 · 1 left")
    expect(page.locator("#output-diff")).to_contain_text("Unchanged")
