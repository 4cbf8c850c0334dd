"""The approval rule, as a pure function: a request's state from its policy snapshot and
its current decisions. Services call it inside the request's row lock; tests call it
directly with tables of cases.

Rules (issue #5, Part A):
- The version's author never counts, whatever they decide.
- A person counts once, for one role, even when they hold several; the roles are the
  ones they held when deciding (stored on the decision). Roles are assigned to the
  required slots by a maximum bipartite matching, so {sme: 1, compliance: 1} is met by
  one SME+compliance approver and one compliance approver.
- Any current "reject" rejects the request.
- A current "request changes" blocks approval when the policy says so
  (`changes_block`); otherwise it is advisory and the request is approved once the
  required approvals are there.
- With `threads_block`, a request with open comment threads on its version is not
  approved however many approvals it has: the open threads are listed as missing.
"""

from collections.abc import Iterable
from dataclasses import dataclass, field

from apps.reviews.models import ReviewDecision, ReviewRequest
from apps.squads.permissions import Role

State = ReviewRequest.State
Verdict = ReviewDecision.Verdict

ROLE_NOUN = {
    Role.OWNER.value: ("owner", "owner"),
    Role.PROMPT_ENGINEER.value: ("prompt engineer", "prompt engineer"),
    Role.SME.value: ("SME", "SME"),
    Role.COMPLIANCE.value: ("compliance", "compliance"),
    Role.VIEWER.value: ("viewer", "viewer"),
}


@dataclass(frozen=True)
class Vote:
    reviewer_id: int
    verdict: str
    roles: tuple[str, ...]


@dataclass(frozen=True)
class Outcome:
    state: str
    missing: list[str] = field(default_factory=list)
    # reviewer id -> the role their approval was counted for
    counted: dict[int, str] = field(default_factory=dict)


def missing_text(role: str, count: int) -> str:
    noun = ROLE_NOUN.get(role, (role, role))[0]
    return f"needs {count} {noun} approval{'s' if count != 1 else ''}"


def required_slots(required: dict[str, int]) -> list[str]:
    """{"sme": 2, "compliance": 1} -> ["compliance", "sme", "sme"] (stable order)."""
    return [role for role in sorted(required) for _ in range(int(required[role]))]


def _match(slots: list[str], approvers: list[Vote]) -> dict[int, int]:
    """Maximum bipartite matching of approvers to role slots (Kuhn's algorithm).
    Returns slot index -> approver index."""
    owner_of: dict[int, int] = {}

    def place(a: int, seen: set[int]) -> bool:
        for s, role in enumerate(slots):
            if role in approvers[a].roles and s not in seen:
                seen.add(s)
                if s not in owner_of or place(owner_of[s], seen):
                    owner_of[s] = a
                    return True
        return False

    for a in range(len(approvers)):
        place(a, set())
    return owner_of


def threads_missing(count: int) -> str:
    return f"{count} open comment thread{'s' if count != 1 else ''} to resolve"


def derive(
    *, policy: dict, author_id: int | None, votes: Iterable[Vote], open_threads: int = 0
) -> Outcome:
    """The state of an open (not withdrawn or superseded) request. `open_threads` counts
    the unresolved comment threads on the version (read only when the policy's
    `threads_block` is set)."""
    counted_votes = [v for v in votes if v.reviewer_id != author_id]
    rejecting = [v for v in counted_votes if v.verdict == Verdict.REJECT]
    if rejecting:
        return Outcome(State.REJECTED, [f"rejected by {len(rejecting)} reviewer(s)"])
    asking = [v for v in counted_votes if v.verdict == Verdict.REQUEST_CHANGES]
    if asking and policy.get("changes_block", True):
        return Outcome(
            State.CHANGES_REQUESTED,
            [f"changes requested by {len(asking)} reviewer(s): save a new version for review"],
        )
    approvers = [v for v in counted_votes if v.verdict == Verdict.APPROVE]
    slots = required_slots(policy.get("required_approvals") or {})
    matched = _match(slots, approvers)
    short: dict[str, int] = {}
    for s, role in enumerate(slots):
        if s not in matched:
            short[role] = short.get(role, 0) + 1
    counted = {approvers[a].reviewer_id: slots[s] for s, a in matched.items()}
    missing = [missing_text(role, n) for role, n in short.items()]
    if policy.get("threads_block") and open_threads > 0:
        missing.append(threads_missing(open_threads))
    if not missing:
        return Outcome(State.APPROVED, [], counted)
    if asking:
        return Outcome(State.CHANGES_REQUESTED, missing, counted)
    return Outcome(State.OPEN, missing, counted)


def approval_would_count(
    *,
    policy: dict,
    author_id: int | None,
    votes: Iterable[Vote],
    reviewer_id: int,
    roles: list[str],
) -> bool:
    """Whether an approval by `reviewer_id` holding `roles` would fill a required slot that
    the current approvals leave open (under the matching, so a compliance lead counts
    when the one SME+compliance approver could move over to the SME slot)."""
    if reviewer_id == author_id:
        return False
    slots = required_slots(policy.get("required_approvals") or {})
    approvers = [
        v
        for v in votes
        if v.verdict == Verdict.APPROVE and v.reviewer_id not in (author_id, reviewer_id)
    ]
    before = len(_match(slots, approvers))
    after = len(_match(slots, [*approvers, Vote(reviewer_id, Verdict.APPROVE, tuple(roles))]))
    return after > before


def is_closed(*, state: str, policy: dict) -> bool:
    """A closed request takes no more decisions. "Changes requested" closes it only when
    the policy makes that verdict blocking: the author then saves a new version."""
    if state in (State.REJECTED, State.WITHDRAWN, State.SUPERSEDED):
        return True
    return state == State.CHANGES_REQUESTED and bool(policy.get("changes_block", True))
