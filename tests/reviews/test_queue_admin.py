import pytest
from django.test import Client

from apps.reviews.models import ReviewQueue
from apps.reviews.services import queues as services
from tests.factories import PASSWORD, UserFactory
from tests.reviews import queue_factories as f

pytestmark = pytest.mark.django_db


@pytest.fixture
def admin_client_as_root():
    UserFactory(username="root", is_staff=True, is_superuser=True)
    client = Client()
    client.login(username="root", password=PASSWORD)
    return client


def test_admin_pages_and_actions_go_through_the_services(squad, admin_client_as_root):
    queue = f.queue(squad)
    (item,) = f.external_items(queue, 1)
    services.review_annotate(
        actor=UserFactory(username="sme"), item=item, verdict="approve", scores=f.scores()
    )
    for model in ("reviewqueue", "reviewitem", "annotation", "reviewexport"):
        assert admin_client_as_root.get(f"/admin/reviews/{model}/").status_code == 200
    ReviewQueue.objects.filter(pk=queue.pk).update(stats={})
    changelist = "/admin/reviews/reviewqueue/"
    response = admin_client_as_root.post(
        changelist, {"action": "rebuild_stats", "_selected_action": [queue.pk]}, follow=True
    )
    assert "statistics corrected, 0 item(s) corrected" in response.content.decode()
    assert ReviewQueue.objects.get(pk=queue.pk).stats["annotations"] == 1
    admin_client_as_root.post(changelist, {"action": "archive", "_selected_action": [queue.pk]})
    assert ReviewQueue.objects.get(pk=queue.pk).archived_at is not None
