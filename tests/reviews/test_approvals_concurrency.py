"""Decisions arriving at the same moment: the request's row lock makes them take turns, so
no decision is lost or counted twice."""

import threading

import pytest
from django.db import connection

from apps.reviews.models import ReviewDecision, ReviewRequest
from apps.reviews.services import approvals as services
from tests.factories import UserFactory, make_squad
from tests.reviews.factories import engineer_prompt, open_review


def _race(*calls) -> list[Exception]:
    """Run the calls in threads released together; return the errors they raised."""
    barrier = threading.Barrier(len(calls))
    errors: list[Exception] = []

    def run(call):
        barrier.wait()
        try:
            call()
        except Exception as exc:
            errors.append(exc)
        finally:
            connection.close()

    threads = [threading.Thread(target=run, args=(call,)) for call in calls]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return errors


@pytest.fixture
def review():
    make_squad(
        owner=UserFactory(username="owner"),
        members={"engineer": ["prompt_engineer"], "sme": ["sme"], "compliance": ["compliance"]},
    )
    from apps.squads.models import Squad

    return open_review(engineer_prompt(Squad.objects.get(slug="acme")).latest_version)


def _decide(review, username: str, verdict: str = "approve", comment: str = ""):
    user = UserFactory(username=username)
    return lambda: services.review_decide(
        actor=user, review=review, verdict=verdict, comment=comment
    )


@pytest.mark.postgres
@pytest.mark.django_db(transaction=True)
def test_simultaneous_approvals_both_count(review):
    errors = _race(_decide(review, "sme"), _decide(review, "compliance"))
    assert errors == []
    review.refresh_from_db()
    assert review.state == ReviewRequest.State.APPROVED and review.missing == []
    assert ReviewDecision.objects.filter(request=review, is_current=True).count() == 2


@pytest.mark.postgres
@pytest.mark.django_db(transaction=True)
def test_the_same_reviewer_twice_keeps_one_current_decision(review):
    errors = _race(_decide(review, "sme"), _decide(review, "sme", "request_changes", "too long"))
    # Whichever came second either replaced the first or, after a blocking "request
    # changes", was refused: never two current decisions.
    assert len(errors) <= 1
    current = ReviewDecision.objects.filter(request=review, is_current=True)
    assert current.count() == 1
    assert ReviewDecision.objects.filter(request=review).count() == 2 - len(errors)
    review.refresh_from_db()
    expected = {
        "approve": ReviewRequest.State.OPEN,
        "request_changes": ReviewRequest.State.CHANGES_REQUESTED,
    }[current.get().verdict]
    assert review.state == expected
