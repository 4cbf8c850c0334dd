"""The annotator's progress ("3 of 7 · 4 left"), inputs as labelled fields, and the
reviewer's edit shown as a word diff against the original output (annotator and item
page)."""

import pytest
from django.test import Client

from apps.reviews.edits import input_fields, word_diff
from apps.reviews.models import ReviewItem
from apps.reviews.services import queues as services
from tests.factories import PASSWORD, UserFactory
from tests.reviews import queue_factories as f

pytestmark = pytest.mark.django_db
Q = "/squads/acme/review-queues/support-answers/"
HTMX = {"HX-Request": "true"}


def _client(username: str) -> Client:
    client = Client()
    assert client.login(username=username, password=PASSWORD)
    return client


def test_word_diff_marks_deleted_and_inserted_words():
    assert word_diff("It left the depot today.", "It left the warehouse today.") == [
        ("equal", "It left the "),
        ("delete", "depot"),
        ("insert", "warehouse"),
        ("equal", " today."),
    ]
    assert word_diff("same", "same") == [("equal", "same")]


def test_input_fields_are_labelled():
    fields = input_fields({"customer_name": "Ada", "items": [1, 2], "text": "a\nb"})
    assert [(x["label"], x["text"], x["block"]) for x in fields] == [
        ("Customer name", "Ada", False),
        ("Items", "[\n  1,\n  2\n]", True),
        ("Text", "a\nb", True),
    ]


@pytest.fixture
def queue(squad):
    queue = f.queue(squad, overlap=1)
    services.review_items_add_external(
        actor=UserFactory(username="owner"),
        queue=queue,
        items=[
            {
                "inputs": {"customer_name": "Ada", "question": f"Where is parcel {i}?"},
                "output": "It left the depot today.",
            }
            for i in range(7)
        ],
    )
    return queue


def test_progress_counts_done_and_left(queue):
    client = _client("sme")
    first = _html(client.get(Q + "annotate"))
    assert "<strong>1 of 7</strong> · 7 left" in first
    items = list(ReviewItem.objects.filter(queue=queue).order_by("pk"))
    for item in items[:2]:
        services.review_next_item(actor=UserFactory(username="sme"), queue=queue)
        services.review_annotate(
            actor=UserFactory(username="sme"), item=item, verdict="approve", scores=f.scores()
        )
    # Another reviewer takes one (overlap 1): it leaves this reviewer's count.
    services.review_next_item(actor=UserFactory(username="compliance"), queue=queue)
    page = _html(client.get(Q + "annotate"))
    assert "<strong>3 of 6</strong> · 4 left" in page
    # Inputs as labelled fields, not raw JSON first.
    assert "<dt>Customer name</dt><dd>Ada</dd>" in page
    assert "<dt>Question</dt><dd>Where is parcel 3?</dd>" in page


def test_edit_is_shown_as_a_diff_against_the_original(queue):
    item = ReviewItem.objects.filter(queue=queue).order_by("pk").first()
    services.review_next_item(actor=UserFactory(username="sme"), queue=queue)
    services.review_annotate(
        actor=UserFactory(username="sme"),
        item=item,
        verdict="approve",
        scores=f.scores(),
        edited_output="It left the warehouse today.",
    )
    # Back on the item (k): the edit against the original.
    again = _html(_client("sme").get(f"{Q}annotate?before=", headers=HTMX))
    assert '<del><span class="skip">deleted: </span>depot</del>' in again
    assert '<ins><span class="skip">inserted: </span>warehouse</ins>' in again
    assert 'src="/static/js/output-diff.js"' in _html(_client("sme").get(Q + "annotate"))
    # The item page shows adjudicators the same diff.
    detail = _html(_client("owner").get(f"{Q}items/{item.pk}"))
    assert '<ins><span class="skip">inserted: </span>warehouse</ins>' in detail


def _html(response) -> str:
    assert response.status_code == 200, response.content[:300]
    return response.content.decode()
