import pytest

from apps.reviews.models import Notification
from apps.reviews.selectors import approvals as selectors
from apps.reviews.services import approvals as services
from tests.factories import UserFactory
from tests.reviews.factories import engineer_prompt, new_version, open_review

pytestmark = pytest.mark.django_db


@pytest.fixture
def template(squad):
    return engineer_prompt(squad)


def test_unread_list_count_and_mark_read(template, django_assert_num_queries):
    sme = UserFactory(username="sme")
    open_review(template.latest_version, reviewers=[sme])
    open_review(new_version(template, 2), reviewers=[sme])
    other = UserFactory(username="compliance")
    open_review(new_version(template, 3), reviewers=[other])
    with django_assert_num_queries(1):
        items = list(selectors.notification_list_for_user(user=sme, unread=True))
        assert [n.squad.slug for n in items] == ["acme", "acme"]
    assert [n.text for n in items] == [
        "engineer asks for your review of 'support' v2.",
        "engineer asks for your review of 'support' v1.",
    ]
    assert selectors.notification_unread_count(user=sme) == 2
    # Only the actor's own notifications are touched, whatever ids they send.
    theirs = Notification.objects.get(user=other).pk
    assert services.notification_mark_read(actor=sme, ids=[items[0].pk, theirs]) == 1
    assert Notification.objects.get(pk=theirs).read_at is None
    assert selectors.notification_unread_count(user=sme) == 1
    assert services.notification_mark_read(actor=sme) == 1
    assert services.notification_mark_read(actor=sme) == 0
    assert list(selectors.notification_list_for_user(user=sme, unread=True)) == []
    assert len(selectors.notification_list_for_user(user=sme)) == 2


def test_withdrawing_tells_the_author_but_not_the_actor(template):
    review = open_review(template.latest_version, by="owner")
    services.review_withdraw(actor=UserFactory(username="owner"), review=review)
    told = list(
        Notification.objects.filter(kind="review.withdrawn").values_list(
            "user__username", flat=True
        )
    )
    assert told == ["engineer"]
