"""The annotator in a real browser, driven by the keyboard: digits score, `e` opens the
output editor, `a` approves and saves, the next item is swapped in; typing in a text field
fires no shortcut; `k` and `j` walk back and forth. The annotation is stored with its edit
distance and the time the page measured."""

import re
from urllib.parse import parse_qs

import pytest
from django.contrib.auth import get_user_model
from playwright.sync_api import expect

from apps.reviews.models import Annotation, ReviewItem
from apps.reviews.services import queues
from apps.squads import services

pytestmark = pytest.mark.browser

SME, SME_PW = "sam", "pw-sam-123"
SWAP_TIMEOUT_MS = 5_000
RUBRIC = [
    {"name": "accuracy", "kind": "numeric", "min": 1, "max": 5, "required": True},
    {"name": "tone", "kind": "categorical", "options": ["formal", "casual", "curt"]},
]
EDIT = " (checked)"


@pytest.fixture
def queue(db):
    users = get_user_model().objects
    owner = users.create_user("olivia", password="pw-olivia-123")
    squad = services.squad_create(actor=owner, name="Demo", slug="demo")
    services.membership_add(
        actor=owner, squad=squad, user=users.create_user(SME, password=SME_PW), roles=["sme"]
    )
    queue = queues.review_queue_create(
        actor=owner,
        squad=squad,
        name="Answers",
        instructions="Is the answer right?",
        rubric=RUBRIC,
        overlap=1,
        annotator_roles=["sme"],
    )
    queues.review_items_add_external(
        actor=owner,
        queue=queue,
        items=[
            {"inputs": {"q": "Where is my parcel?"}, "output": "It left the depot today."},
            {"inputs": {"q": "Can I return it?"}, "output": "Yes, within 30 days."},
        ],
    )
    return queue


def test_score_edit_approve_with_the_keyboard(page, login, live_server, queue):
    first, second = ReviewItem.objects.filter(queue=queue).order_by("pk")
    login(page, SME, SME_PW)
    page.goto("/squads/demo/")
    page.get_by_role("link", name="Review queues").click()
    page.get_by_role("link", name="Annotate Answers").click()
    # The heading shows as soon as the HTML is parsed; the shortcuts exist once the
    # deferred static/js/annotate.js has run (before "load"). Keys pressed earlier are lost.
    page.wait_for_load_state("load")
    panel = page.locator("#item-panel")
    expect(panel.get_by_role("heading", name=f"Item {first.pk}")).to_be_visible()
    expect(page.locator("#shortcuts")).to_contain_text("Set the score that has focus")

    # 4: the first score; Tab moves to the next score, where 2 picks the second option.
    page.keyboard.press("4")
    expect(panel.locator("input[name=score_accuracy][value='4']")).to_be_checked()
    page.keyboard.press("Tab")
    page.keyboard.press("2")
    expect(panel.locator("input[name=score_tone][value='casual']")).to_be_checked()
    expect(panel.locator("input[name=score_accuracy][value='4']")).to_be_checked()

    # e focuses the editor without typing an "e"; keys typed there are text, not shortcuts.
    editor = panel.get_by_label("Output")
    page.keyboard.press("e")
    expect(editor).to_be_focused()
    page.keyboard.press("Control+End")
    page.keyboard.type(EDIT)
    expect(editor).to_have_value("It left the depot today." + EDIT)
    page.keyboard.press("Escape")
    expect(editor).not_to_be_focused()

    page.wait_for_timeout(1_100)  # so that the measured time is at least a second
    with page.expect_request(
        lambda r: r.method == "POST" and r.url.endswith(f"/items/{first.pk}/annotate")
    ) as request:
        page.keyboard.press("a")
    sent = parse_qs(request.value.post_data)
    assert sent["verdict"] == ["approve"] and int(sent["seconds_spent"][0]) >= 1

    expect(panel.get_by_role("heading", name=f"Item {second.pk}")).to_be_visible(
        timeout=SWAP_TIMEOUT_MS
    )
    expect(panel.get_by_role("status")).to_have_text(
        f"Saved: you approved item {first.pk} (edit distance {len(EDIT)})."
    )
    annotation = Annotation.objects.get(item=first)
    assert annotation.verdict == "approve"
    assert annotation.scores == {"accuracy": 4, "tone": "casual"}
    assert annotation.edited_output == "It left the depot today." + EDIT
    assert annotation.edit_distance == len(EDIT)
    assert annotation.seconds_spent == int(sent["seconds_spent"][0]) >= 1

    # Typing in the comment fires nothing ("a", "r", "k", digits are text there).
    comment = panel.get_by_label("Comment")
    comment.click()
    page.keyboard.type("a rare kick 42")
    expect(comment).to_have_value("a rare kick 42")
    expect(panel.get_by_role("heading", name=f"Item {second.pk}")).to_be_visible()
    assert not Annotation.objects.filter(item=second).exists()

    # k: the item annotated before, with what was given; j: back to the current one.
    page.keyboard.press("Escape")
    page.keyboard.press("k")
    expect(panel.get_by_role("heading", name=re.compile(f"^Item {first.pk}"))).to_be_visible(
        timeout=SWAP_TIMEOUT_MS
    )
    expect(panel.locator("input[name=score_tone][value='casual']")).to_be_checked()
    expect(panel.get_by_label("Output")).to_have_value("It left the depot today." + EDIT)
    page.keyboard.press("j")
    expect(panel.get_by_role("heading", name=f"Item {second.pk}")).to_be_visible(
        timeout=SWAP_TIMEOUT_MS
    )

    # r with the required score missing: refused inline, nothing stored; then the queue is done.
    page.keyboard.press("r")
    expect(panel.locator("#score-accuracy-error")).to_have_text(
        "is required", timeout=SWAP_TIMEOUT_MS
    )
    page.keyboard.press("5")
    page.keyboard.press("r")
    expect(panel.get_by_role("heading", name="Queue done")).to_be_visible(timeout=SWAP_TIMEOUT_MS)
    assert Annotation.objects.get(item=second).verdict == "reject"
