"""Reviewers claiming and annotating at the same moment, on real PostgreSQL row locks."""

import threading
from collections import Counter

import pytest
from django.db import connection

from apps.core.exceptions import Conflict
from apps.reviews.models import Annotation, ReviewAssignment, ReviewItem, ReviewQueue
from apps.reviews.services import queues as services
from tests.factories import UserFactory, make_squad
from tests.reviews import queue_factories as f

pytestmark = [pytest.mark.postgres, pytest.mark.django_db(transaction=True)]


def _setup(items: int, reviewers: int, overlap: int = 2):
    owner = UserFactory(username="race-owner")
    squad = make_squad(owner=owner, slug="race")
    queue = f.queue(squad, overlap=overlap, by=owner.username)
    f.external_items(queue, items, by=owner.username)
    return queue, f.reviewers(squad, reviewers)


def _run(workers, target) -> list[Exception]:
    errors: list[Exception] = []
    barrier = threading.Barrier(len(workers))

    def run(worker):
        barrier.wait()
        try:
            target(worker)
        except Exception as exc:
            errors.append(exc)
        finally:
            connection.close()

    threads = [threading.Thread(target=run, args=(w,)) for w in workers]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return errors


def _assert_counters_match_rows(queue: ReviewQueue) -> None:
    per_item = Counter(ReviewAssignment.objects.filter(queue=queue).values_list("item", flat=True))
    for item in ReviewItem.objects.filter(queue=queue):
        assert item.claims == per_item[item.pk] <= queue.overlap, item
        assert item.is_full == (item.claims >= queue.overlap)
    pairs = list(ReviewAssignment.objects.values_list("item", "reviewer"))
    assert len(pairs) == len(set(pairs))


def test_simultaneous_next_item_claims():
    """Eight reviewers × three claims each, all at once, overlap 2: nobody gets an item
    twice, no item gets a third reviewer, claim counters equal the assignment rows."""
    queue, reviewers = _setup(items=10, reviewers=8)
    claimed: dict[str, list[int]] = {}

    def claim_three(user):
        for _ in range(3):
            item = services.review_next_item(actor=user, queue=queue)
            if item is not None:
                claimed.setdefault(user.username, []).append(item.pk)
                # Drop the claim as if it had expired, so the next call claims again.
                ReviewAssignment.objects.filter(item=item, reviewer=user).update(
                    completed_at=item.created_at
                )

    assert _run(reviewers, claim_three) == []
    _assert_counters_match_rows(queue)
    total = sum(len(v) for v in claimed.values())
    assert (
        total
        == ReviewAssignment.objects.count()
        == sum(ReviewItem.objects.values_list("claims", flat=True))
    )
    assert total == 20  # 24 attempts for 10 items × 2 places: every place taken once
    for items in claimed.values():
        assert len(items) == len(set(items))


def test_claim_and_annotate_until_the_queue_is_done():
    """Six reviewers work through 15 items (overlap 2) concurrently; then each finishes
    alone. Every item ends with exactly two annotations by two people, and the queue's
    running statistics lost no update."""
    queue, reviewers = _setup(items=15, reviewers=6)

    def work(user):
        while (item := services.review_next_item(actor=user, queue=queue)) is not None:
            services.review_annotate(
                actor=user,
                item=item,
                verdict="approve" if item.pk % 3 else "reject",
                scores=f.scores(accuracy=1 + user.pk % 5),
                seconds_spent=7,
            )

    assert _run(reviewers, work) == []
    for user in reviewers:  # items skipped while locked by others
        work(user)
    _assert_counters_match_rows(queue)
    assert set(ReviewItem.objects.values_list("annotation_count", flat=True)) == {2}
    pairs = list(Annotation.objects.values_list("item", "reviewer"))
    assert len(pairs) == len(set(pairs)) == 30
    stats = ReviewQueue.objects.get(pk=queue.pk).stats
    assert stats["annotations"] == 30 and stats["by_count"] == {"2": 15}
    assert sum(r["seconds"] for r in stats["reviewers"].values()) == 30 * 7
    assert stats == services.review_queue_stats_rebuild(queue=queue).stats


def test_direct_annotations_respect_overlap():
    """Five reviewers annotate the same unclaimed item at once (overlap 2): two are
    stored, three are told the item already has its reviewers."""
    queue, reviewers = _setup(items=1, reviewers=5)
    item = ReviewItem.objects.get(queue=queue)

    def annotate(user):
        services.review_annotate(actor=user, item=item, verdict="approve", scores=f.scores())

    errors = _run(reviewers, annotate)
    assert len(errors) == 3 and all(isinstance(e, Conflict) for e in errors)
    assert "already has 2 reviewer(s)" in errors[0].message
    assert Annotation.objects.count() == 2
    _assert_counters_match_rows(queue)
    assert ReviewQueue.objects.get(pk=queue.pk).stats["annotations"] == 2
