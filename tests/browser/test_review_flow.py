"""The approval flow in a real browser, each person signing in in turn: the engineer asks
for a review of v1; the SME approves it; compliance requests changes; the engineer saves
v2 in the editor and asks again; the gate refuses `production` while an approval is
missing and says which; SME and compliance approve v2; the engineer moves `production`.

Users, the squad and v1 are made through the services; every decision, request and label
move is clicked in the page (htmx included)."""

import pytest
from django.contrib.auth import get_user_model
from playwright.sync_api import expect

from apps.prompts.models import Label
from apps.reviews.models import ReviewRequest
from apps.squads import services
from tests.prompts.factories import make_prompt

pytestmark = pytest.mark.browser

PEOPLE = {"olivia": ["owner"], "erin": ["prompt_engineer"], "sam": ["sme"], "cora": ["compliance"]}
# Once the server's answer is in, htmx swaps it within milliseconds.
# Long enough for a loaded 2-core CI machine; a swap that never happens still fails.
SWAP_TIMEOUT_MS = 10_000
PROMPT = "/squads/demo/prompts/support/"


def _password(username: str) -> str:
    return f"pw-{username}-123"


@pytest.fixture
def squad(db):
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
    make_prompt(squad, users["erin"])
    return squad


@pytest.fixture
def sign_in(page, login):
    """sign_in(name): sign out whoever is signed in, then sign in as `name`."""

    def do(name: str) -> None:
        page.context.clear_cookies()
        login(page, name, _password(name))

    return do


def _open_request_from_inbox(page, version: int) -> None:
    nav_inbox = page.locator("#nav-inbox")
    expect(nav_inbox).to_contain_text("1 waiting")
    nav_inbox.click()
    expect(page.get_by_role("heading", name="Waiting for you (1)")).to_be_visible()
    page.get_by_role("link", name=f"support v{version}").click()
    expect(page.get_by_role("heading", name=f"support v{version}")).to_be_visible()


def _decide(page, verdict: str, comment: str = "") -> None:
    panel = page.locator("#decision-panel")
    panel.get_by_label(verdict, exact=True).check()
    if comment:
        panel.get_by_label("Comment").fill(comment)
    panel.get_by_role("button", name="Submit decision").click()
    expect(page.locator("#decision-panel")).to_contain_text(
        "Your decision is recorded.", timeout=SWAP_TIMEOUT_MS
    )
    # Nothing else waits for this reviewer: the count leaves the navigation.
    expect(page.locator("#nav-inbox")).to_have_text("Inbox")


def _request_review(page, version: int, note: str) -> None:
    panel = page.locator(f"#review-v{version}")
    expect(panel.get_by_role("button", name=f"Request review of v{version}")).to_be_visible()
    panel.get_by_label("Note for reviewers").fill(note)
    panel.get_by_role("button", name=f"Request review of v{version}").click()
    expect(panel).to_contain_text("Review requested.", timeout=SWAP_TIMEOUT_MS)
    expect(panel.locator(".badge.state")).to_have_text("open")


def _set_production(page, version: int) -> None:
    form = page.locator("form.new-label")
    form.get_by_label("Label name").fill("production")
    form.locator("select[name=version]").select_option(str(version))
    form.get_by_role("button", name="Set label").click()


def test_sme_approves_compliance_asks_changes_v2_approved_goes_to_production(
    page, sign_in, live_server, squad
):
    # The engineer asks for a review of v1 from the prompt page.
    sign_in("erin")
    page.goto(PROMPT)
    _request_review(page, 1, "First version for the support desk")

    # The SME finds it in the inbox and approves it on the request page.
    sign_in("sam")
    _open_request_from_inbox(page, 1)
    expect(page.locator("#review-state")).to_have_text("open")
    _decide(page, "Approve")
    panel = page.locator("#decision-panel")
    expect(panel.locator("#decision-sam")).to_contain_text("SME")
    expect(panel.get_by_role("list", name="Still missing")).to_have_text(
        "needs 1 compliance approval"
    )

    # Compliance requests changes, with a comment; the request stops taking decisions.
    sign_in("cora")
    _open_request_from_inbox(page, 1)
    _decide(page, "Request changes", "Cite the refund policy in the system message.")
    expect(page.locator("#review-state")).to_have_text("changes requested")
    expect(panel).to_contain_text("Cite the refund policy in the system message.")
    expect(panel.get_by_role("button", name="Submit decision")).to_have_count(0)
    page.screenshot(path="/tmp/review-request.png", full_page=True)

    # The engineer is told, saves v2 in the editor and asks again.
    sign_in("erin")
    expect(page.locator("#nav-notifications")).to_contain_text("unread")
    page.goto(PROMPT)
    expect(page.locator("#review-v1 .badge.state")).to_have_text("changes requested")
    page.get_by_role("link", name="Edit", exact=True).click()
    message = page.get_by_label("Message 1 Content")
    message.press("Control+End")
    message.press_sequentially(" Cite the refund policy.")
    page.get_by_label("Commit message").fill("Cite the refund policy")
    page.get_by_role("button", name="Save new version").click()
    expect(page.get_by_role("heading", name="Current version: v2")).to_be_visible()
    _request_review(page, 2, "Now citing the refund policy")
    # v1's request gave way to v2's.
    assert ReviewRequest.objects.get(version__number=1).state == ReviewRequest.State.SUPERSEDED

    # The SME approves v2.
    sign_in("sam")
    _open_request_from_inbox(page, 2)
    # production points nowhere yet: all of v2 is what it would get.
    expect(page.get_by_role("heading", name="Against production")).to_be_visible()
    expect(page.get_by_text("production points at no version of this prompt yet")).to_be_visible()
    _decide(page, "Approve")

    # Before compliance approves, the gate refuses production and says what is missing.
    sign_in("erin")
    page.goto(PROMPT)
    _set_production(page, 2)
    expect(page.locator("#label-error")).to_contain_text(
        "needs 1 compliance approval", timeout=SWAP_TIMEOUT_MS
    )
    assert not Label.objects.filter(name="production").exists()

    # Compliance approves v2.
    sign_in("cora")
    _open_request_from_inbox(page, 2)
    _decide(page, "Approve")
    expect(page.locator("#review-state")).to_have_text("approved")
    expect(page.locator("#decision-panel")).to_contain_text("Approved: v2 may be labelled")

    # The engineer moves production to v2 from the prompt page.
    sign_in("erin")
    page.goto(PROMPT)
    expect(page.locator("#review-v2 .badge.state")).to_have_text("approved")
    _set_production(page, 2)
    expect(page.locator("#label-panel")).to_contain_text(
        "Label production now points at v2.", timeout=SWAP_TIMEOUT_MS
    )
    expect(page.locator("#label-production")).to_contain_text("production → v2")
    assert Label.objects.get(name="production").version.number == 2
    page.screenshot(path="/tmp/review-flow.png", full_page=True)
