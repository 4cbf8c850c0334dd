import pytest

from apps.core.exceptions import NotFound
from apps.reviews.models import ApprovalPolicy
from apps.reviews.selectors import approvals as selectors
from apps.reviews.services import approvals as services
from tests.factories import UserFactory
from tests.reviews.factories import add_reviewers, engineer_prompt, new_version, open_review

pytestmark = pytest.mark.django_db


@pytest.fixture
def template(squad):
    add_reviewers(squad)
    return engineer_prompt(squad)


def u(username: str):
    return UserFactory(username=username)


def test_the_default_policy_is_read_without_being_written(squad):
    policy = selectors.approval_policy_get_for_user(user=u("viewer"), squad=squad)
    assert policy.pk is None and policy.required_approvals == {"sme": 1, "compliance": 1}
    assert not ApprovalPolicy.objects.exists()
    with pytest.raises(NotFound):
        selectors.approval_policy_get_for_user(user=u("outsider"), squad=squad)


def test_the_request_of_a_version(template):
    v1 = template.latest_version
    viewer = u("viewer")
    assert selectors.review_request_for_version(user=viewer, version=v1) is None
    first = open_review(v1)
    services.review_withdraw(actor=u("engineer"), review=first)
    assert selectors.review_request_for_version(user=viewer, version=v1).pk == first.pk
    second = open_review(v1)
    assert selectors.review_request_for_version(user=viewer, version=v1).pk == second.pk
    with pytest.raises(NotFound):
        selectors.review_request_for_version(user=u("outsider"), version=v1)


def test_request_get_is_404_for_missing_and_forbidden_alike(template, squad):
    review = open_review(template.latest_version)
    with pytest.raises(NotFound, match="Squad 'acme' not found"):
        selectors.review_request_get_for_user(user=u("outsider"), squad=squad, pk=review.pk)
    with pytest.raises(NotFound, match=f"#{review.pk + 1} not found in squad 'acme'"):
        selectors.review_request_get_for_user(user=u("viewer"), squad=squad, pk=review.pk + 1)


def test_comment_get_is_scoped_to_the_version(template):
    v1 = template.latest_version
    v2 = new_version(template, 2)
    comment = services.comment_add(actor=u("sme"), version=v1, body="Hm.")
    viewer = u("viewer")
    assert selectors.comment_get_for_user(user=viewer, version=v1, pk=comment.pk) == comment
    with pytest.raises(NotFound, match=f"Comment #{comment.pk} not found on version 2"):
        selectors.comment_get_for_user(user=viewer, version=v2, pk=comment.pk)
    with pytest.raises(NotFound):
        selectors.comment_get_for_user(user=u("outsider"), squad=template.squad, pk=comment.pk)


@pytest.mark.parametrize(("blocking", "waiting"), [(True, 0), (False, 1)])
def test_changes_requested_stays_in_the_inbox_only_when_not_blocking(template, blocking, waiting):
    services.approval_policy_update(actor=u("owner"), squad=template.squad, changes_block=blocking)
    review = open_review(template.latest_version)
    services.review_decide(
        actor=u("sme"), review=review, verdict="request_changes", comment="shorter"
    )
    assert len(selectors.inbox_for_user(user=u("compliance"))) == waiting
    assert selectors.inbox_counts_for_user(user=u("comp2")) == (
        {template.squad.pk: 1} if waiting else {}
    )
    # The reviewer who decided is not waited for any more.
    assert selectors.inbox_for_user(user=u("sme")) == []
