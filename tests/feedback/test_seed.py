from django.core.management import call_command

from apps.feedback.models import Feedback
from apps.feedback.selectors import template_dashboard
from apps.prompts.models import PromptTemplate
from tests.factories import UserFactory


def test_seed_demo_gives_the_dashboard_data_once(db):
    call_command("seed_demo")
    count = Feedback.objects.count()
    assert count > 10
    call_command("seed_demo")
    assert Feedback.objects.count() == count
    template = PromptTemplate.objects.get(slug="summarise")
    board = template_dashboard(user=UserFactory(username="admin"), template=template, days=30)
    v1 = board.stats_of(1)
    assert v1.summary["requests"] >= 40 and v1.summary["feedback_score"] is not None
    assert sum(v is not None for v in v1.series["latency_p50"]) in (14, 15)  # midnight
