"""Every role walks the seeded demo squad by its links, breadth-first (issue 16).

Signed in as each demo user, the crawler starts at the squad page and follows every
in-app link: each page must answer 200, fit a 1,440 px window without sideways
scrolling, and the areas the role may use must all be reached. The same walk at 390 px
(a phone) checks that the header's controls stay visible and that list and detail pages
do not scroll sideways (wide tables scroll inside their own box).

Kept bounded in time: addresses that differ only in numbers (/generations/<id>, ?page=)
are visited at most PER_PATTERN times, and logout, POST forms, downloads, the API and
the admin console are not followed.
"""

import re
from collections import deque
from urllib.parse import urldefrag, urljoin, urlsplit

import pytest
from django.core.management import call_command

from apps.squads.management.commands.seed_demo import DEMO_PASSWORD

pytestmark = pytest.mark.browser

SQUAD = "/squads/demo/"
EVERYONE = {
    "/squads/demo/prompts/",
    "/squads/demo/reviews/",
    "/squads/demo/review-queues/",
    "/squads/demo/generations/",
    "/squads/demo/batches/",
    "/squads/demo/targets/",
    "/squads/demo/datasets/",
    "/squads/demo/finetune/",
    "/squads/demo/evals/",
    "/squads/demo/alerts/",
    "/squads/demo/governance/",
    "/squads/demo/approval-policy",
    "/squads/demo/members/",
    "/account/tokens/",
    "/inbox/",
    "/notifications/",
}
# The areas each demo user must reach from the squad page (and only these of the
# role-limited ones: the audit log, webhooks and the gateway).
# Owners manage the squad's targets: the new-target and edit forms.
TARGET_FORMS = {"/squads/demo/targets/new", "/squads/demo/targets/support-local/edit"}
ROLES = {
    "olivia": EVERYONE
    | TARGET_FORMS
    | {"/audit/demo/", "/squads/demo/webhooks/", "/squads/demo/gateway/"},
    "priya": EVERYONE | {"/squads/demo/gateway/"},
    "sam": EVERYONE,
    "carmen": EVERYONE | {"/audit/demo/", "/squads/demo/gateway/"},
    "victor": EVERYONE,
}
LIMITED = {"/audit/demo/", "/squads/demo/webhooks/", "/squads/demo/gateway/"} | TARGET_FORMS
PER_PATTERN = 1
# A page answers in well under a second; a loaded test machine may stall one for a while.
GOTO_TIMEOUT_MS = 30_000
NOT_FOLLOWED = re.compile(
    r"^/(api/|admin/|logout|static/|media/|favicon)|\.(jsonl|csv|zip|json|txt|safetensors)(\?|$)"
)
NARROW, WIDE = 390, 1440


def _pattern(path_and_query: str) -> str:
    """The address with its numbers and query values blanked: one pattern per page kind."""
    path, _, query = path_and_query.partition("?")
    shape = re.sub(r"\d+", "N", path)
    keys = sorted(part.split("=")[0] for part in query.split("&") if part)
    return shape + ("?" + "&".join(keys) if keys else "")


def _links(page, base: str) -> list[str]:
    hrefs = page.eval_on_selector_all(
        "a[href]:not([download])", "els => els.map(e => e.getAttribute('href'))"
    )
    found = []
    for href in hrefs:
        url = urldefrag(urljoin(page.url, href))[0]
        if not url.startswith(base):
            continue
        parts = urlsplit(url)
        local = parts.path + (f"?{parts.query}" if parts.query else "")
        if not NOT_FOLLOWED.search(local):
            found.append(local)
    return found


def _overflow(page) -> int:
    """How far the page scrolls sideways beyond the window, in px."""
    return page.evaluate(
        "() => document.documentElement.scrollWidth - document.documentElement.clientWidth"
    )


# Form layout: inside a fieldset every label stands right above its own control or right
# before it on the same line (never beside another field), and number inputs are styled
# like the other fields, not tiny.
FORM_LAYOUT = """() => {
  const problems = [];
  for (const label of document.querySelectorAll("fieldset label[for]")) {
    const control = document.getElementById(label.htmlFor);
    if (!control || ["checkbox", "radio", "hidden"].includes(control.type)) continue;
    if (label.closest("td, th")) continue;  // a table row pairs them side by side
    if (!label.offsetParent || !control.offsetParent) continue;
    const a = label.getBoundingClientRect(), b = control.getBoundingClientRect();
    const above = a.bottom <= b.top + 2 && b.top - a.bottom < 16 && Math.abs(a.left - b.left) < 16;
    const before = Math.abs((a.top + a.bottom) / 2 - (b.top + b.bottom) / 2) < a.height
      && b.left >= a.right - 2 && b.left - a.right < 24;
    if (!above && !before)
      problems.push(`label for #${label.htmlFor} is not next to its field`);
  }
  for (const input of document.querySelectorAll("input[type=number]")) {
    if (!input.offsetParent) continue;
    const style = getComputedStyle(input);
    if (input.getBoundingClientRect().width < 64 || style.borderTopLeftRadius === "0px")
      problems.push(`#${input.id || input.name} is a tiny unstyled number input`);
  }
  return problems;
}"""


def _crawl(
    page, base: str, *, width: int, check: str = FORM_LAYOUT
) -> tuple[dict[str, int], dict[str, int], dict[str, list[str]]]:
    """Breadth-first from the squad page: {address: status}, {address: overflow px},
    {address: problems the `check` script finds}."""
    page.set_viewport_size({"width": width, "height": 900})
    seen_patterns: dict[str, int] = {}
    statuses: dict[str, int] = {}
    overflows: dict[str, int] = {}
    layouts: dict[str, list[str]] = {}
    queue = deque([SQUAD])
    queued = {SQUAD}
    while queue:
        address = queue.popleft()
        response = page.goto(address, wait_until="domcontentloaded", timeout=GOTO_TIMEOUT_MS)
        statuses[address] = response.status if response else 0
        overflow = _overflow(page)
        if overflow > 0:
            overflows[address] = overflow
        problems = page.evaluate(check)
        if problems:
            layouts[address] = problems
        for link in _links(page, base):
            if link in queued:
                continue
            shape = _pattern(link)
            if seen_patterns.get(shape, 0) >= PER_PATTERN:
                continue
            seen_patterns[shape] = seen_patterns.get(shape, 0) + 1
            queued.add(link)
            queue.append(link)
    return statuses, overflows, layouts


@pytest.fixture
def demo(db):
    call_command("seed_demo")


@pytest.mark.parametrize("username", list(ROLES))
def test_each_role_reaches_its_areas_and_every_page_fits_1440(
    page, login, live_server, demo, username
):
    login(page, username, DEMO_PASSWORD)
    statuses, overflows, layouts = _crawl(page, live_server.url, width=WIDE)
    refused = {a: s for a, s in statuses.items() if s != 200}
    assert refused == {}, f"{username} followed links to pages that refused them"
    assert overflows == {}, f"{username}: pages wider than {WIDE} px"
    assert layouts == {}, f"{username}: broken form layouts"
    visited = {a.split("?")[0] for a in statuses}
    missing = ROLES[username] - visited
    assert missing == set(), f"{username} cannot reach {sorted(missing)} from {SQUAD}"
    assert visited & LIMITED == ROLES[username] & LIMITED
    assert len(statuses) > 20  # the walk went past the navigation


def _header_is_usable(page, username: str) -> None:
    header = page.locator("header.top")
    bar = header.bounding_box()
    for control in (
        header.get_by_role("link", name="API tokens"),
        header.get_by_text(username, exact=True),
        header.get_by_role("button", name="Sign out"),
    ):
        box = control.bounding_box()
        assert box is not None and control.is_visible()
        # Inside the window and inside the dark bar, not white on white below it.
        assert box["x"] >= 0 and box["x"] + box["width"] <= NARROW, box
        assert bar["y"] <= box["y"] and box["y"] + box["height"] <= bar["y"] + bar["height"]


# On every page: the user's controls lie inside the window and inside the dark bar.
HEADER_CONTROLS = """() => {
  const header = document.querySelector("header.top");
  if (!header) return [];  // the evidence pack: a printable document, no app header
  const bar = header.getBoundingClientRect();
  return [...document.querySelectorAll("#top-user a, #top-user .top-username, #top-user button")]
    .filter(el => {
      const r = el.getBoundingClientRect();
      return r.width === 0 || r.left < 0 || r.right > window.innerWidth
        || r.top < bar.top || r.bottom > bar.bottom;
    })
    .map(el => `${el.textContent.trim()} is outside the header`);
}"""


def test_on_a_phone_the_header_stays_usable_and_pages_do_not_scroll_sideways(
    page, login, live_server, demo
):
    login(page, "olivia", DEMO_PASSWORD)
    page.set_viewport_size({"width": NARROW, "height": 800})
    page.goto(SQUAD)
    _header_is_usable(page, "olivia")
    statuses, overflows, problems = _crawl(
        page, live_server.url, width=NARROW, check=HEADER_CONTROLS
    )
    assert {a: s for a, s in statuses.items() if s != 200} == {}
    assert overflows == {}, f"pages that scroll sideways at {NARROW} px"
    assert problems == {}, "header controls out of reach"


def test_on_a_phone_a_viewer_keeps_the_header_controls(page, login, live_server, demo):
    login(page, "victor", DEMO_PASSWORD)
    page.set_viewport_size({"width": NARROW, "height": 800})
    for address in (SQUAD, "/squads/demo/generations/", "/account/tokens/"):
        page.goto(address)
        _header_is_usable(page, "victor")
        assert _overflow(page) == 0, address
