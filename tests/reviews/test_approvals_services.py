import pytest
from django.core.cache import cache

from apps.audit.models import AuditEvent
from apps.core.exceptions import Conflict, NotFound, PermissionDenied, ValidationFailed
from apps.reviews.models import ApprovalPolicy, Notification, ReviewDecision, ReviewRequest
from apps.reviews.services import approvals as services
from apps.squads import services as squads
from apps.squads.models import Membership
from apps.squads.selectors import squad_by_slug
from tests.factories import UserFactory
from tests.reviews.factories import (
    add_reviewers,
    approve,
    engineer_prompt,
    new_version,
    open_review,
)

pytestmark = pytest.mark.django_db
State = ReviewRequest.State


@pytest.fixture
def template(squad):
    add_reviewers(squad)
    return engineer_prompt(squad)


def u(username: str):
    return UserFactory(username=username)


def decide(review, who: str, verdict: str = "approve", comment: str = ""):
    return services.review_decide(actor=u(who), review=review, verdict=verdict, comment=comment)


def _policy(squad, **changes):
    return services.approval_policy_update(actor=u("owner"), squad=squad, **changes)


# --- the policy matrix through the services --------------------------------------------------


def _withdraw(review):
    return services.review_withdraw(actor=u("engineer"), review=review)


def _supersede(review):
    new_version(review.template, 2)
    open_review(review.template.versions.get(number=2))
    review.refresh_from_db()
    return review


SCENARIOS = [
    # (id, policy changes, steps, expected state, expected missing)
    ("sme + compliance", {}, [("sme", "approve"), ("compliance", "approve")], "approved", []),
    ("sme alone", {}, [("sme", "approve")], "open", ["needs 1 compliance approval"]),
    ("dual-role person counts once", {}, [("dual", "approve")], "open", ["needs 1 SME approval"]),
    ("dual role + compliance", {}, [("dual", "approve"), ("comp2", "approve")], "approved", []),
    (
        "engineer and owner fill no slot",
        {},
        [("engineer2", "approve"), ("owner", "approve")],
        "open",
        ["needs 1 compliance approval", "needs 1 SME approval"],
    ),
    (
        "two SMEs required",
        {"required_approvals": {"sme": 2, "compliance": 1}},
        [("sme", "approve"), ("dual", "approve"), ("compliance", "approve")],
        "approved",
        [],
    ),
    (
        "changes requested blocks",
        {},
        [("sme", "approve"), ("compliance", "request_changes")],
        "changes_requested",
        ["changes requested by 1 reviewer(s): save a new version for review"],
    ),
    (
        "changes requested advisory",
        {"changes_block": False},
        [("sme2", "request_changes"), ("sme", "approve"), ("compliance", "approve")],
        "approved",
        [],
    ),
    (
        "changes requested then withdrawn by the reviewer",
        {"changes_block": False},
        [("sme", "request_changes"), ("sme", "approve"), ("compliance", "approve")],
        "approved",
        [],
    ),
    (
        "reject",
        {},
        [("sme", "approve"), ("compliance", "reject")],
        "rejected",
        ["rejected by 1 reviewer(s)"],
    ),
    (
        "approve changed to reject",
        {},
        [("sme", "approve"), ("compliance", "approve"), ("sme", "reject")],
        "rejected",
        ["rejected by 1 reviewer(s)"],
    ),
    (
        "owner requires owner",
        {"required_approvals": {"owner": 1}},
        [("owner", "approve")],
        "approved",
        [],
    ),
    ("nothing required", {"required_approvals": {}}, [], "approved", []),
    (
        "withdrawn",
        {},
        [("sme", "approve"), _withdraw],
        "withdrawn",
        ["needs 1 compliance approval"],
    ),
    (
        "approved then withdrawn",
        {},
        [("sme", "approve"), ("compliance", "approve"), _withdraw],
        "withdrawn",
        [],
    ),
    (
        "superseded",
        {},
        [("sme", "approve"), _supersede],
        "superseded",
        ["needs 1 compliance approval"],
    ),
]


@pytest.mark.parametrize(
    ("policy", "steps", "state", "missing"),
    [pytest.param(*s[1:], id=s[0]) for s in SCENARIOS],
)
def test_policy_matrix_through_the_services(template, policy, steps, state, missing):
    if policy:
        _policy(template.squad, **policy)
    review = open_review(template.latest_version)
    for step in steps:
        review = step(review) if callable(step) else decide(review, *step, comment="because")
    review.refresh_from_db()
    assert (review.state, review.missing) == (state, missing)
    assert (review.closed_at is not None) == (
        state in ("changes_requested", "rejected", "withdrawn", "superseded")
    )


def test_the_author_cannot_decide_even_with_a_reviewer_role(template):
    owner = u("owner")
    squads.membership_set_roles(
        actor=owner,
        membership=Membership.objects.get(user__username="engineer"),
        roles=["prompt_engineer", "sme"],
    )
    review = open_review(template.latest_version)
    with pytest.raises(PermissionDenied, match="You wrote version 1 of 'support'; another"):
        decide(review, "engineer")
    assert not ReviewDecision.objects.exists()


def test_the_role_counted_is_the_one_held_when_deciding(template):
    owner = u("owner")
    review = open_review(template.latest_version)
    # sme2 is made compliance before deciding: counts as compliance.
    squads.membership_set_roles(
        actor=owner, membership=Membership.objects.get(user__username="sme2"), roles=["compliance"]
    )
    review = decide(review, "sme2")
    assert review.missing == ["needs 1 SME approval"]
    assert ReviewDecision.objects.get(reviewer__username="sme2").roles == ["compliance"]
    # Losing the role afterwards does not undo the counted approval.
    squads.membership_set_roles(
        actor=owner, membership=Membership.objects.get(user__username="sme2"), roles=["viewer"]
    )
    review = decide(review, "sme")
    assert review.state == State.APPROVED


def test_a_changed_decision_keeps_its_history(template):
    review = open_review(template.latest_version)
    decide(review, "sme", "approve")
    review = decide(review, "sme", "request_changes", "tone is off")
    rows = list(ReviewDecision.objects.filter(request=review).values_list("verdict", "is_current"))
    assert rows == [("approve", False), ("request_changes", True)]
    events = AuditEvent.objects.filter(action="review.decided").order_by("sequence")
    assert [e.data["verdict"] for e in events] == ["approve", "request_changes"]
    assert events.last().data["previous_verdict"] == "approve"
    assert review.state == State.CHANGES_REQUESTED


def test_decision_refusals(template):
    review = open_review(template.latest_version)
    with pytest.raises(ValidationFailed) as exc:
        decide(review, "sme", "reject", "   ")
    assert exc.value.field == "comment" and "comment" in exc.value.message.lower()
    with pytest.raises(ValidationFailed) as exc:
        decide(review, "sme", "maybe")
    assert exc.value.field == "verdict"
    with pytest.raises(PermissionDenied):
        decide(review, "viewer")
    with pytest.raises(NotFound):
        decide(review, "outsider")
    decide(review, "compliance", "request_changes", "add a disclaimer")
    with pytest.raises(Conflict, match="changes were requested; save a new version"):
        decide(review, "sme")
    assert ReviewDecision.objects.count() == 1


def test_a_rejected_request_takes_no_more_decisions(template):
    review = decide(open_review(template.latest_version), "sme", "reject", "unsafe")
    with pytest.raises(Conflict, match="takes no more decisions: it is rejected"):
        decide(review, "compliance")


# --- opening ---------------------------------------------------------------------------------


def test_open_snapshots_the_policy_and_audits(template):
    review = open_review(template.latest_version, note="please look at the tone")
    assert review.state == State.OPEN
    assert review.policy == {
        "version": 1,
        "required_approvals": {"sme": 1, "compliance": 1},
        "changes_block": True,
        "threads_block": False,
        "min_eval_pass_rate": None,
    }
    event = AuditEvent.objects.get(action="review.requested")
    assert event.data["version"] == 1 and event.data["note"] == "please look at the tone"
    assert event.actor_label == "engineer"


def test_a_policy_change_after_opening_does_not_touch_the_open_request(template):
    review = open_review(template.latest_version)
    _policy(template.squad, required_approvals={"sme": 2, "compliance": 1})
    review = decide(review, "sme")
    review = decide(review, "compliance")
    assert review.state == State.APPROVED and review.policy["version"] == 1
    # A request opened after the change is under the new policy.
    later = open_review(new_version(template, 2))
    assert later.policy["version"] == 2
    assert decide(decide(later, "sme"), "compliance").missing == ["needs 1 SME approval"]


def test_one_request_per_version(template):
    first = open_review(template.latest_version)
    with pytest.raises(Conflict, match=f"already has review request #{first.pk} \\(open\\)"):
        open_review(template.latest_version)
    services.review_withdraw(actor=u("engineer"), review=first)
    again = open_review(template.latest_version)
    assert again.state == State.OPEN


def test_a_newer_version_supersedes_pending_requests_but_not_approved_ones(template):
    v1 = template.latest_version
    approved = approve(v1)
    v2 = new_version(template, 2)
    pending = open_review(v2)
    decide(pending, "sme")
    v3 = new_version(template, 3)
    # v2 is under review: v1 (older) cannot be reviewed meanwhile...
    approved_pk = approved.pk
    services.review_withdraw(actor=u("engineer"), review=approved)
    with pytest.raises(Conflict, match="Version 2 of 'support' is already under review"):
        open_review(v1)
    # ...and v3's request supersedes v2's.
    newest = open_review(v3)
    pending.refresh_from_db()
    assert pending.state == State.SUPERSEDED and pending.superseded_by_id == newest.pk
    assert ReviewRequest.objects.get(pk=approved_pk).state == State.WITHDRAWN
    event = AuditEvent.objects.filter(action="review.requested").last()
    assert event.data["superseded"] == [pending.pk]


def test_approved_requests_survive_a_newer_request(template):
    approved = approve(template.latest_version)
    open_review(new_version(template, 2))
    approved.refresh_from_db()
    assert approved.state == State.APPROVED


def test_open_refusals(template):
    version = template.latest_version
    with pytest.raises(PermissionDenied):
        open_review(version, by="sme")
    with pytest.raises(NotFound):
        open_review(version, by="outsider")
    cases = {
        "outsider": "'outsider' is not a member of squad 'acme'",
        "viewer": "'viewer' may not decide on reviews",
        "engineer": "'engineer' wrote version 1 and cannot review it",
    }
    for username, message in cases.items():
        with pytest.raises(ValidationFailed, match=message) as exc:
            open_review(version, reviewers=[u(username)])
        assert exc.value.field == "reviewers"
    assert not ReviewRequest.objects.exists()


def test_nothing_required_means_approved_at_once(template):
    _policy(template.squad, required_approvals={"sme": 0})
    review = open_review(template.latest_version)
    assert review.state == State.APPROVED and review.missing == []


def test_withdraw_rules(template):
    review = open_review(template.latest_version, by="owner")
    with pytest.raises(PermissionDenied, match="Only the person who opened review request"):
        services.review_withdraw(actor=u("engineer2"), review=review)
    with pytest.raises(PermissionDenied):
        services.review_withdraw(actor=u("sme"), review=review)
    # The opener (owner) or any owner may.
    review = services.review_withdraw(actor=u("owner"), review=review)
    assert review.state == State.WITHDRAWN and review.closed_at is not None
    with pytest.raises(Conflict, match="is withdrawn; only open, approved"):
        services.review_withdraw(actor=u("owner"), review=review)
    other = open_review(template.latest_version)
    assert services.review_withdraw(actor=u("owner"), review=other).state == State.WITHDRAWN
    assert AuditEvent.objects.filter(action="review.withdrawn").count() == 2


# --- the policy ------------------------------------------------------------------------------


def test_policy_is_created_lazily_with_the_default(squad):
    assert not ApprovalPolicy.objects.exists()
    policy = services.approval_policy_get(squad=squad)
    assert policy.required_approvals == {"sme": 1, "compliance": 1} and policy.version == 1
    assert services.approval_policy_get(squad=squad).pk == policy.pk


def test_policy_update_validates_bumps_and_audits(squad):
    squad = squad_by_slug("acme")  # the cached row, as views and the API get it
    policy = services.approval_policy_update(
        actor=u("compliance"),
        squad=squad,
        required_approvals={"sme": 2, "compliance": 1, "owner": 0},
        protected_labels=["production", "canary", "production"],
        changes_block=False,
        min_eval_pass_rate=0.9,
    )
    assert policy.required_approvals == {"sme": 2, "compliance": 1}
    assert policy.version == 2 and policy.updated_by.username == "compliance"
    assert squad.protected_labels == ["canary", "production"]
    assert squad_by_slug("acme").protected_labels == ["canary", "production"]
    event = AuditEvent.objects.get(action="review.policy_updated")
    assert event.data["before"]["required_approvals"] == {"sme": 1, "compliance": 1}
    assert event.data["after"]["protected_labels"] == ["canary", "production"]
    assert event.data["changed"] == [
        "changes_block",
        "min_eval_pass_rate",
        "protected_labels",
        "required_approvals",
    ]
    # Nothing changed: no new version, no event; None clears the pass rate.
    services.approval_policy_update(actor=u("owner"), squad=squad, changes_block=False)
    assert ApprovalPolicy.objects.get().version == 2
    cleared = services.approval_policy_update(
        actor=u("owner"), squad=squad, min_eval_pass_rate=None
    )
    assert cleared.min_eval_pass_rate is None and cleared.version == 3


@pytest.mark.parametrize(
    ("changes", "field", "message"),
    [
        ({"required_approvals": {"viewer": 1}}, "required_approvals.viewer", "'viewer' is not a"),
        ({"required_approvals": {"boss": 1}}, "required_approvals.boss", "'boss' is not a role"),
        ({"required_approvals": {"sme": 11}}, "required_approvals.sme", r"from 0 to 10 \(got 11\)"),
        ({"required_approvals": {"sme": -1}}, "required_approvals.sme", "from 0 to 10"),
        ({"required_approvals": {"sme": 1.5}}, "required_approvals.sme", "whole number"),
        ({"required_approvals": {"sme": True}}, "required_approvals.sme", "whole number"),
        ({"required_approvals": ["sme"]}, "required_approvals", "map roles to counts"),
        ({"protected_labels": ["Prod"]}, "protected_labels", "'Prod' is not a label name"),
        ({"protected_labels": ["a" * 51]}, "protected_labels", "is not a label name"),
        ({"min_eval_pass_rate": 1.5}, "min_eval_pass_rate", "from 0 to 1"),
        ({"changes_block": "yes"}, "changes_block", "true or false"),
        ({"threads_block": 1}, "threads_block", "true or false"),
    ],
)
def test_policy_update_refusals(squad, changes, field, message):
    with pytest.raises(ValidationFailed, match=message) as exc:
        _policy(squad, **changes)
    assert exc.value.field == field
    assert not AuditEvent.objects.filter(action="review.policy_updated").exists()


def test_who_may_change_the_policy(squad):
    for username in ("engineer", "sme", "viewer"):
        with pytest.raises(PermissionDenied, match="Edit the approval policy"[1:]):
            services.approval_policy_update(actor=u(username), squad=squad, changes_block=False)
    with pytest.raises(NotFound):
        services.approval_policy_update(actor=u("outsider"), squad=squad, changes_block=False)
    services.approval_policy_update(actor=u("compliance"), squad=squad, changes_block=False)


def test_protected_labels_change_reaches_the_cached_squad_row(squad):
    squad_by_slug("acme")
    assert cache.get("squad:row:acme")["protected_labels"] == ["production"]
    _policy(squad, protected_labels=["production", "canary"])
    assert cache.get("squad:row:acme") is None
    assert squad_by_slug("acme").protected_labels == ["canary", "production"]


# --- notifications ---------------------------------------------------------------------------


def _inbox_of(username: str) -> list[str]:
    return list(Notification.objects.filter(user__username=username).values_list("kind", flat=True))


def test_requests_notify_named_reviewers_or_the_required_roles(template):
    open_review(template.latest_version, reviewers=[u("sme2")])
    assert _inbox_of("sme2") == ["review.requested"]
    assert _inbox_of("sme") == [] and _inbox_of("compliance") == []
    v2 = new_version(template, 2)
    open_review(v2, by="owner")
    # Everyone holding a required role, never the author or the opener.
    told = set(
        Notification.objects.filter(kind="review.requested").values_list(
            "user__username", flat=True
        )
    )
    assert told == {"sme2", "sme", "compliance", "dual", "comp2"}
    assert (
        Notification.objects.filter(user__username="engineer", kind="review.requested").count() == 0
    )


def test_decisions_notify_the_opener_and_the_author(template):
    review = open_review(template.latest_version, by="owner")
    decide(review, "sme")
    decide(review, "compliance")
    assert _inbox_of("owner") == _inbox_of("engineer")
    kinds = _inbox_of("engineer")
    assert kinds.count("review.decided") == 2 and kinds.count("review.state_changed") == 1
    changed = Notification.objects.get(user__username="engineer", kind="review.state_changed")
    assert changed.text == f"Review request #{review.pk} of 'support' v1 is now approved."
    assert changed.url == "/squads/acme/prompts/support/versions/1"
    assert _inbox_of("sme") == ["review.requested"]
