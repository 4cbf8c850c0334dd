"""The inbox costs a fixed number of queries whatever the number of requests."""

import pytest
from django.utils import timezone

from apps.prompts.models import PromptVersion
from apps.reviews.models import ReviewDecision, ReviewRequest
from apps.reviews.selectors import approvals as selectors
from apps.reviews.services.approvals import approval_policy_get, policy_snapshot
from tests.factories import UserFactory
from tests.reviews.factories import add_reviewers, engineer_prompt

pytestmark = pytest.mark.django_db


def _bulk_requests(squad, n: int) -> None:
    """n open requests on n versions of one prompt: every third has the SME's approval,
    every fifth names sme2, every seventh already has compliance's decision."""
    template = engineer_prompt(squad)
    v1 = template.latest_version
    engineer, sme = UserFactory(username="engineer"), UserFactory(username="sme")
    compliance, sme2 = UserFactory(username="compliance"), UserFactory(username="sme2")
    versions = PromptVersion.objects.bulk_create(
        PromptVersion(
            template=template,
            number=i + 2,
            messages=v1.messages,
            input_schema=v1.input_schema,
            model_settings=v1.model_settings,
            commit_message=f"v{i + 2}",
            author=engineer,
            content_hash=f"{i:064d}",
        )
        for i in range(n)
    )
    snapshot = policy_snapshot(approval_policy_get(squad=squad))
    now = timezone.now()
    requests = ReviewRequest.objects.bulk_create(
        ReviewRequest(
            squad=squad,
            template=template,
            version=v,
            opened_by=engineer,
            policy=snapshot,
            missing=["needs 1 compliance approval", "needs 1 SME approval"],
            created_at=now,
            updated_at=now,
        )
        for v in versions
    )
    ReviewDecision.objects.bulk_create(
        [
            ReviewDecision(request=r, reviewer=sme, verdict="approve", roles=["sme"])
            for i, r in enumerate(requests)
            if i % 3 == 0
        ]
        + [
            ReviewDecision(request=r, reviewer=compliance, verdict="approve", roles=["compliance"])
            for i, r in enumerate(requests)
            if i % 7 == 0
        ]
    )
    ReviewRequest.reviewers.through.objects.bulk_create(
        ReviewRequest.reviewers.through(reviewrequest_id=r.pk, user_id=sme2.pk)
        for i, r in enumerate(requests)
        if i % 5 == 0
    )


def _expected(n: int, who: str) -> int:
    if who == "compliance":
        return sum(1 for i in range(n) if i % 7)
    # sme2: named on every fifth, else waited for where the SME slot is still empty.
    return sum(1 for i in range(n) if i % 5 == 0 or i % 3)


@pytest.mark.parametrize("n", [10, 1000, 1200])
def test_inbox_selector_query_count(squad, n, django_assert_num_queries):
    add_reviewers(squad)
    _bulk_requests(squad, n)
    for who in ("compliance", "sme2"):
        user = UserFactory(username=who)
        with django_assert_num_queries(3):
            items = selectors.inbox_for_user(user=user)
            assert all(r.template.slug == "support" and r.squad.slug == "acme" for r in items)
            assert all(r.version.author.username == "engineer" for r in items)
        assert len(items) == _expected(n, who)
        with django_assert_num_queries(2):
            assert selectors.inbox_counts_for_user(user=user) == {squad.pk: _expected(n, who)}
    reasons = {r.inbox_reason for r in selectors.inbox_for_user(user=UserFactory(username="sme2"))}
    assert reasons == {"named", "role"}
    # A member without a deciding role costs one query.
    viewer = UserFactory(username="viewer")
    with django_assert_num_queries(1):
        assert selectors.inbox_counts_for_user(user=viewer) == {}


@pytest.mark.parametrize("n", [10, 1000])
def test_inbox_api_query_count(squad, n, api_as, django_assert_num_queries):
    add_reviewers(squad)
    _bulk_requests(squad, n)
    client = api_as("compliance")
    client.call("GET", "/api/v1/me")  # the token's first use records last_used_at
    with django_assert_num_queries(3):
        response = client.call("GET", "/api/v1/inbox")
    assert response.status_code == 200
    assert response.json()["total"] == _expected(n, "compliance")
    assert response.json()["counts"] == {"acme": _expected(n, "compliance")}
