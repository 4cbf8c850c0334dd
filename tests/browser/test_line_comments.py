"""Pull-request review in a real browser: the SME clicks a line number in the diff
against production, types a comment in the form that opens under the line, and finds the
thread under that line after saving; the engineer picks a reviewer by searching the
member list instead of Ctrl-clicking a multi-select."""

import pytest
from django.contrib.auth import get_user_model
from playwright.sync_api import expect

from apps.prompts import services as prompts
from apps.reviews.models import ReviewComment, ReviewRequest
from apps.reviews.services import approvals as reviews
from apps.squads import services
from tests.prompts.factories import make_prompt

pytestmark = pytest.mark.browser

PEOPLE = {
    "olivia": ["owner"],
    "erin": ["prompt_engineer"],
    "sam": ["sme"],
    "sara": ["sme"],
    "cora": ["compliance"],
}


def _password(username: str) -> str:
    return f"pw-{username}-123"


@pytest.fixture
def people(db):
    users = {
        name: get_user_model().objects.create_user(name, password=_password(name))
        for name in PEOPLE
    }
    squad = services.squad_create(actor=users["olivia"], name="Demo", slug="demo")
    for name, roles in PEOPLE.items():
        if name != "olivia":
            services.membership_add(
                actor=users["olivia"], squad=squad, user=users[name], roles=roles
            )
    template = make_prompt(squad, users["erin"])
    v1 = template.latest_version
    review = reviews.review_request_open(actor=users["erin"], version=v1)
    for name in ("sam", "cora"):
        reviews.review_decide(actor=users[name], review=review, verdict="approve")
    prompts.label_move(actor=users["olivia"], template=template, name="production", version=v1)
    return users, template


def _new_version(users, template, text: str):
    return prompts.prompt_version_create(
        actor=users["erin"],
        template=template,
        messages=[v for v in template.latest_version.messages[:1]]
        + [{"role": "user", "content": text}],
        input_schema=template.latest_version.input_schema,
        commit_message="reword",
    )


def test_sme_comments_on_a_line_of_the_diff(page, login, people):
    users, template = people
    v2 = _new_version(users, template, "Answer {{ customer.name }} kindly:\n{{ question }}")
    review = reviews.review_request_open(actor=users["erin"], version=v2)

    login(page, "sam", _password("sam"))
    page.goto(f"/squads/demo/reviews/{review.pk}")
    diff = page.locator("#diff-production-m2")
    expect(diff).to_be_visible()
    diff.get_by_role("link", name="Comment on message 2, line 1").click()
    box = page.get_by_label("Your comment on message 2, line 1")
    expect(box).to_be_focused()
    box.fill("Say 'politely', not 'kindly'.")
    page.locator("#line-comment-row").get_by_role("button", name="Add comment").click()

    # Back on the request page: the thread sits under line 1 of the diff and the content.
    thread_row = page.locator("#diff-production-m2 tr.inline-thread-row")
    expect(thread_row).to_contain_text("Say 'politely', not 'kindly'.")
    expect(thread_row).to_contain_text("sam")
    expect(page.locator("#message-2 tr.inline-thread-row")).to_contain_text("politely")
    thread = ReviewComment.objects.get()
    assert (thread.message_index, thread.line, thread.request_id) == (1, 1, review.pk)
    # The row under the line is the one right after line 1's row.
    line_one = page.locator(
        "#diff-production-m2 tr", has=page.get_by_role("link", name="Comment on message 2, line 1")
    )
    expect(line_one.locator("xpath=following-sibling::tr[1]")).to_have_class("inline-thread-row")


def test_engineer_picks_a_reviewer_by_searching(page, login, people):
    users, template = people
    _new_version(users, template, "{{ question }}")

    login(page, "erin", _password("erin"))
    page.goto("/squads/demo/prompts/support/versions/2")
    panel = page.locator("#review-v2")
    search = panel.get_by_label("Search reviewers")
    expect(search).to_be_visible()
    search.fill("sar")
    expect(panel.get_by_label("sara")).to_be_visible()
    expect(panel.get_by_label("sam")).to_be_hidden()
    expect(panel.get_by_label("cora")).to_be_hidden()
    panel.get_by_label("sara").check()
    search.fill("compliance")
    # A checked reviewer stays in view while searching for another.
    expect(panel.get_by_label("sara")).to_be_visible()
    panel.get_by_label("cora").check()
    search.press("Enter")  # does not submit the form
    expect(panel.get_by_role("button", name="Request review of v2")).to_be_visible()
    panel.get_by_role("button", name="Request review of v2").click()
    expect(panel).to_contain_text("Review requested.")
    review = ReviewRequest.objects.get(version__number=2)
    assert sorted(u.username for u in review.reviewers.all()) == ["cora", "sara"]
