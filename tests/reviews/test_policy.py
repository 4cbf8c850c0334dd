"""The approval rule as a table: policy × decisions (with the roles held when deciding) →
state and what is missing. Pure: no database."""

import pytest

from apps.reviews.policy import (
    Vote,
    approval_would_count,
    derive,
    is_closed,
    missing_text,
    required_slots,
)

AUTHOR = 1
DEFAULT = {"required_approvals": {"sme": 1, "compliance": 1}, "changes_block": True}
NON_BLOCKING = {**DEFAULT, "changes_block": False}
TWO_SME = {"required_approvals": {"sme": 2, "compliance": 1}, "changes_block": True}
NOTHING = {"required_approvals": {}, "changes_block": True}


def v(reviewer: int, verdict: str, *roles: str) -> Vote:
    return Vote(reviewer, verdict, roles)


A, R, X = "approve", "request_changes", "reject"

CASES = [
    # (id, policy, votes, state, missing)
    ("nothing yet", DEFAULT, [], "open", ["needs 1 compliance approval", "needs 1 SME approval"]),
    ("sme only", DEFAULT, [v(2, A, "sme")], "open", ["needs 1 compliance approval"]),
    ("compliance only", DEFAULT, [v(3, A, "compliance")], "open", ["needs 1 SME approval"]),
    ("sme and compliance", DEFAULT, [v(2, A, "sme"), v(3, A, "compliance")], "approved", []),
    (
        "two smes",
        DEFAULT,
        [v(2, A, "sme"), v(4, A, "sme")],
        "open",
        ["needs 1 compliance approval"],
    ),
    (
        "engineer's approval fills no slot",
        DEFAULT,
        [v(2, A, "sme"), v(5, A, "prompt_engineer")],
        "open",
        ["needs 1 compliance approval"],
    ),
    (
        "viewer counts for nothing",
        DEFAULT,
        [v(2, A, "viewer")],
        "open",
        ["needs 1 compliance approval", "needs 1 SME approval"],
    ),
    # Separation of duties: the author never counts, whatever roles they hold.
    (
        "self-approval ignored",
        DEFAULT,
        [v(AUTHOR, A, "sme", "compliance")],
        "open",
        ["needs 1 compliance approval", "needs 1 SME approval"],
    ),
    (
        "self-approval plus compliance",
        DEFAULT,
        [v(AUTHOR, A, "sme"), v(3, A, "compliance")],
        "open",
        ["needs 1 SME approval"],
    ),
    (
        "author's reject ignored",
        DEFAULT,
        [v(AUTHOR, X, "sme"), v(2, A, "sme"), v(3, A, "compliance")],
        "approved",
        [],
    ),
    # One person counts once, even with two roles.
    (
        "dual-role person counts once",
        DEFAULT,
        [v(2, A, "sme", "compliance")],
        "open",
        ["needs 1 SME approval"],
    ),
    # The matching: sme+compliance person and a compliance person fill both slots.
    (
        "dual role + compliance",
        DEFAULT,
        [v(2, A, "sme", "compliance"), v(3, A, "compliance")],
        "approved",
        [],
    ),
    (
        "compliance + dual role (order)",
        DEFAULT,
        [v(3, A, "compliance"), v(2, A, "sme", "compliance")],
        "approved",
        [],
    ),
    (
        "two smes needed",
        TWO_SME,
        [v(2, A, "sme"), v(3, A, "compliance")],
        "open",
        ["needs 1 SME approval"],
    ),
    (
        "two smes and compliance",
        TWO_SME,
        [v(2, A, "sme"), v(4, A, "sme", "compliance"), v(3, A, "compliance")],
        "approved",
        [],
    ),
    (
        "two dual-role people for three slots",
        TWO_SME,
        [v(2, A, "sme", "compliance"), v(4, A, "sme", "compliance")],
        "open",
        ["needs 1 SME approval"],
    ),
    # Request changes: blocking vs advisory.
    (
        "changes requested, blocking",
        DEFAULT,
        [v(2, A, "sme"), v(3, A, "compliance"), v(4, R, "sme")],
        "changes_requested",
        ["changes requested by 1 reviewer(s): save a new version for review"],
    ),
    (
        "changes requested, not blocking, approvals there",
        NON_BLOCKING,
        [v(2, A, "sme"), v(3, A, "compliance"), v(4, R, "sme")],
        "approved",
        [],
    ),
    (
        "changes requested, not blocking, approvals missing",
        NON_BLOCKING,
        [v(2, A, "sme"), v(4, R, "sme")],
        "changes_requested",
        ["needs 1 compliance approval"],
    ),
    # Reject beats everything.
    (
        "reject",
        DEFAULT,
        [v(2, A, "sme"), v(3, A, "compliance"), v(4, X, "sme")],
        "rejected",
        ["rejected by 1 reviewer(s)"],
    ),
    (
        "reject beats changes",
        NON_BLOCKING,
        [v(4, R, "sme"), v(3, X, "compliance")],
        "rejected",
        ["rejected by 1 reviewer(s)"],
    ),
    ("no requirement", NOTHING, [], "approved", []),
]


@pytest.mark.parametrize(
    ("policy", "votes", "state", "missing"),
    [pytest.param(*case[1:], id=case[0]) for case in CASES],
)
def test_policy_matrix(policy, votes, state, missing):
    outcome = derive(policy=policy, author_id=AUTHOR, votes=votes)
    assert (outcome.state, outcome.missing) == (state, missing)


def test_each_approver_is_counted_for_one_role():
    outcome = derive(
        policy=DEFAULT,
        author_id=AUTHOR,
        votes=[v(2, A, "sme", "compliance"), v(3, A, "compliance")],
    )
    assert outcome.counted == {2: "sme", 3: "compliance"}


def test_missing_text_and_slots():
    assert missing_text("compliance", 1) == "needs 1 compliance approval"
    assert missing_text("sme", 2) == "needs 2 SME approvals"
    assert required_slots({"sme": 2, "compliance": 1}) == ["compliance", "sme", "sme"]


@pytest.mark.parametrize(
    ("votes", "roles", "expected"),
    [
        ([], ["sme"], True),
        ([v(2, A, "sme")], ["sme"], False),
        ([v(2, A, "sme")], ["compliance"], True),
        # The dual-role approver sits in one slot; a compliance lead frees the other.
        ([v(2, A, "sme", "compliance")], ["compliance"], True),
        ([v(2, A, "sme", "compliance")], ["sme"], True),
        ([v(2, A, "sme"), v(3, A, "compliance")], ["sme", "compliance"], False),
        ([], ["viewer"], False),
        ([], ["prompt_engineer"], False),
    ],
)
def test_approval_would_count(votes, roles, expected):
    assert (
        approval_would_count(
            policy=DEFAULT, author_id=AUTHOR, votes=votes, reviewer_id=9, roles=roles
        )
        is expected
    )


def test_the_author_would_never_count():
    assert not approval_would_count(
        policy=DEFAULT, author_id=AUTHOR, votes=[], reviewer_id=AUTHOR, roles=["sme"]
    )


@pytest.mark.parametrize(
    ("state", "policy", "closed"),
    [
        ("open", DEFAULT, False),
        ("approved", DEFAULT, False),
        ("changes_requested", DEFAULT, True),
        ("changes_requested", NON_BLOCKING, False),
        ("rejected", NON_BLOCKING, True),
        ("withdrawn", DEFAULT, True),
        ("superseded", DEFAULT, True),
    ],
)
def test_which_states_take_no_more_decisions(state, policy, closed):
    assert is_closed(state=state, policy=policy) is closed
