"""The annotator's selectors: who is offered the annotator, and a reviewer's earlier items."""

import pytest

from apps.core.exceptions import NotFound
from apps.reviews.selectors import queues as selectors
from apps.reviews.services import queues as services
from tests.factories import UserFactory
from tests.reviews import queue_factories as f

pytestmark = pytest.mark.django_db


@pytest.mark.parametrize(
    ("username", "expected"),
    [("owner", False), ("engineer", False), ("sme", True), ("compliance", True)],
)
def test_can_annotate_needs_one_of_the_queues_roles(squad, username, expected):
    queue = f.queue(squad, roles=["sme", "compliance"])
    assert selectors.can_annotate(user=UserFactory(username=username), queue=queue) is expected


@pytest.mark.parametrize("username", ["viewer", "outsider"])
def test_can_annotate_is_false_without_the_permission(squad, username):
    queue = f.queue(squad, roles=["sme"])
    # A viewer's role cannot be an annotator role; an outsider holds nothing.
    assert selectors.can_annotate(user=UserFactory(username=username), queue=queue) is False


def test_previous_walks_back_through_the_reviewers_own_annotations(squad):
    queue = f.queue(squad)
    first, second, third, fourth = f.external_items(queue, 4)
    sme, compliance = UserFactory(username="sme"), UserFactory(username="compliance")
    for item in (second, first):  # annotation order, not item order, is the history
        services.review_annotate(actor=sme, item=item, verdict="approve", scores=f.scores())
    services.review_annotate(actor=compliance, item=third, verdict="reject", scores=f.scores())
    services.review_annotate(
        actor=compliance, item=first, verdict="reject", scores=f.scores(accuracy=1)
    )

    def previous(before):
        return selectors.review_item_previous_for_user(user=sme, queue=queue, before=before)

    latest = previous(None)
    assert latest == first
    # Only the reviewer's own annotation comes with it, whoever else annotated the item.
    assert [a.reviewer_id for a in latest.annotations.all()] == [sme.pk]
    assert previous(fourth.pk) == first  # not annotated by sme: their latest
    assert previous(first.pk) == second
    assert previous(second.pk) is None
    # Replacing an annotation keeps its place in the history.
    services.review_annotate(actor=sme, item=second, verdict="reject", scores=f.scores())
    assert previous(None) == first and previous(first.pk) == second


def test_previous_is_per_queue_and_hidden_from_outsiders(squad):
    queue, other = f.queue(squad), f.queue(squad, name="Other")
    sme = UserFactory(username="sme")
    item = f.external_items(other, 1)[0]
    services.review_annotate(actor=sme, item=item, verdict="approve", scores=f.scores())
    assert selectors.review_item_previous_for_user(user=sme, queue=queue) is None
    assert selectors.review_item_previous_for_user(user=sme, queue=other) == item
    with pytest.raises(NotFound):
        selectors.review_item_previous_for_user(user=UserFactory(username="outsider"), queue=other)
