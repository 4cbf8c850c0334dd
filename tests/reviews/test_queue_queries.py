"""The queue's pages and hot paths cost a fixed number of queries whatever its size."""

import pytest

from apps.reviews.models import ReviewItem
from apps.reviews.selectors import queues as selectors
from apps.reviews.services import queues as services
from tests.factories import UserFactory
from tests.reviews import queue_factories as f

pytestmark = pytest.mark.django_db
SIZES = [10, 1000]


def _queue_with(squad, size):
    """A queue of `size` bulk-created items; the first three annotated, one in dispute."""
    queue = f.queue(squad, overlap=2)
    f.bulk_items(queue, size)
    first, second, third = ReviewItem.objects.filter(queue=queue).order_by("pk")[:3]
    for name, item, verdict in [
        ("sme", first, "approve"),
        ("compliance", first, "reject"),
        ("sme", second, "approve"),
        ("engineer", third, "approve"),
    ]:
        services.review_annotate(
            actor=UserFactory(username=name), item=item, verdict=verdict, scores=f.scores()
        )
    viewer = UserFactory(username="viewer")
    # Loaded as a request would (and the caller's permissions cached on the user).
    return selectors.review_queue_get_for_user(user=viewer, squad=squad, slug=queue.slug), viewer


@pytest.mark.parametrize("size", SIZES)
def test_dashboard(squad, size, django_assert_num_queries):
    queue, viewer = _queue_with(squad, size)
    with django_assert_num_queries(2):  # reviewer names, the first open disagreements
        board = selectors.review_queue_dashboard(user=viewer, queue=queue)
    assert board["items"] == size and board["disagreements"] == 1


@pytest.mark.parametrize("size", SIZES)
def test_next_item_claim_and_own_claim(squad, size, django_assert_num_queries):
    queue, _ = _queue_with(squad, size)
    sme = UserFactory(username="sme")
    # A first claim and annotation warm the reviewer's cached permissions and roles.
    first = services.review_next_item(actor=sme, queue=queue)
    services.review_annotate(actor=sme, item=first, verdict="approve", scores=f.scores())
    # savepoint, own claim, expired claims, claim, assignment, item update, release
    with django_assert_num_queries(7):
        item = services.review_next_item(actor=sme, queue=queue)
    with django_assert_num_queries(3):  # savepoint, own claim (joined to its item), release
        assert services.review_next_item(actor=sme, queue=queue) == item


@pytest.mark.parametrize("size", SIZES)
def test_annotate(squad, size, django_assert_num_queries):
    queue, _ = _queue_with(squad, size)
    compliance = UserFactory(username="compliance")
    item = services.review_next_item(actor=compliance, queue=queue)
    from django.db import connection

    # + the audit chain's advisory lock on PostgreSQL
    expected = 13 if connection.vendor == "postgresql" else 12
    with django_assert_num_queries(expected):
        services.review_annotate(
            actor=compliance, item=item, verdict="reject", scores=f.scores(accuracy=2)
        )


@pytest.mark.parametrize("size", SIZES)
def test_item_page_and_detail(squad, size, django_assert_num_queries):
    queue, viewer = _queue_with(squad, size)
    with django_assert_num_queries(1):
        page = selectors.review_item_list_for_user(user=viewer, queue=queue, limit=50)
    assert len(page.items) == min(size, 50)
    with django_assert_num_queries(1):
        selectors.review_item_list_for_user(user=viewer, queue=queue, state="disagreement")
    with django_assert_num_queries(2):  # the item, its annotations
        selectors.review_item_get_for_user(user=viewer, queue=queue, item_id=page.items[0].pk)
