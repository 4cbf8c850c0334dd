"""The squad navigation (apps/squads/navigation.py): each role reaches every area it may
use from the squad page, never a link that refuses it, with live counts."""

import re

import pytest
from django.test import Client

from apps.feedback.models import Alert
from apps.generation.models import BatchJob
from tests.factories import PASSWORD
from tests.feedback import factories as f
from tests.reviews import factories as rf
from tests.reviews import queue_factories as qf

pytestmark = pytest.mark.django_db

EVERYONE = [
    "Overview",
    "Prompts",
    "Reviews",
    "Review queues",
    "Generations",
    "Batch jobs",
    "Model targets",
    "Datasets",
    "Fine-tuning",
    "Adapters",
    "Evals",
    "Alerts",
    "Governance",
    "Approval policy",
    "Members",
]
AREAS = {
    "owner": [*EVERYONE, "Audit log", "Webhooks", "Gateway"],
    "engineer": [*EVERYONE, "Gateway"],
    "sme": EVERYONE,
    "compliance": [*EVERYONE, "Audit log", "Gateway"],
    "viewer": EVERYONE,
}


def _client(username: str) -> Client:
    client = Client()
    assert client.login(username=username, password=PASSWORD)
    return client


def _nav(body: str) -> str:
    found = re.search(r'<nav class="squad-nav".*?</nav>', body, re.S)
    assert found, "the page has no squad navigation"
    return found.group(0)


def _links(nav: str) -> list[tuple[str, str]]:
    """(label, href) of each area, counts stripped."""
    return [
        (re.sub(r"<span.*", "", label, flags=re.S).strip(), href)
        for href, label in re.findall(r'<li><a href="([^"]+)"[^>]*>(.*?)</a></li>', nav, re.S)
    ]


@pytest.mark.parametrize("role", list(AREAS))
def test_each_role_reaches_every_area_it_may_use_and_each_answers_200(squad, role):
    client = _client(role)
    nav = _nav(client.get("/squads/acme/").content.decode())
    links = _links(nav)
    assert [label for label, _ in links] == AREAS[role]
    for label, href in links:
        response = client.get(href.split("#")[0])
        assert response.status_code == 200, f"{role}: {label} {href} -> {response.status_code}"
        # Every area page keeps the navigation, with itself marked current.
        if "#" not in href:
            current = re.findall(
                r'<a href="([^"]+)" aria-current="page"', _nav(response.content.decode())
            )
            assert current == [href], (label, current)


def test_outsiders_and_pages_outside_squads_show_no_squad_navigation(squad):
    assert 'class="squad-nav"' not in _client("owner").get("/").content.decode()
    refused = _client("outsider").get("/squads/acme/prompts/")
    assert refused.status_code == 404
    assert 'class="squad-nav"' not in refused.content.decode()


def test_counts_of_waiting_reviews_running_jobs_and_open_alerts(squad):
    template = rf.engineer_prompt(squad)
    rf.open_review(template.latest_version)
    for status in (BatchJob.Status.QUEUED, BatchJob.Status.RUNNING, BatchJob.Status.SUCCEEDED):
        BatchJob.objects.create(
            squad=squad,
            prompt_version=template.latest_version,
            target=qf.target(squad),
            status=status,
            rows_path="/dev/null",
            rows_sha256="0" * 64,
            rows_total=1,
        )
    Alert.objects.create(
        squad=squad,
        prompt_version=f.version(squad),
        metric=Alert.Metric.APPROVAL_RATE,
        baseline=0.9,
        current=0.6,
        drop=1 / 3,
        baseline_samples=100,
        window_samples=60,
        last_sample_id=160,
    )
    nav = _nav(_client("sme").get("/squads/acme/").content.decode())
    counts = dict(re.findall(r'>([A-Z][\w -]+?) <span class="count" title="([^"]+)"', nav))
    assert counts == {
        "Reviews": "1 review waiting for you",
        "Batch jobs": "2 batch jobs queued or running",
        "Alerts": "1 open drift alert",
    }
    # A viewer cannot decide reviews: nothing waits for them.
    viewer_nav = _nav(_client("viewer").get("/squads/acme/").content.decode())
    assert "review waiting" not in viewer_nav and "2 batch jobs" in viewer_nav


def test_job_counts_cost_one_query_then_none_while_cached(squad, django_assert_num_queries):
    from apps.feedback.selectors import open_alerts_for_squads
    from apps.squads.access import squad_permissions
    from apps.squads.navigation import squad_navigation
    from tests.factories import UserFactory

    template = rf.engineer_prompt(squad)
    for _ in range(3):
        BatchJob.objects.create(
            squad=squad,
            prompt_version=template.latest_version,
            target=qf.target(squad),
            rows_path="/dev/null",
            rows_sha256="0" * 64,
            rows_total=1,
        )
    owner = UserFactory(username="owner")
    squad_permissions(owner, squad.pk)
    open_alerts_for_squads([squad])
    with django_assert_num_queries(1):
        first = squad_navigation(user=owner, squad=squad, path="/squads/acme/batches/")
    with django_assert_num_queries(0):
        again = squad_navigation(user=owner, squad=squad, path="/squads/acme/batches/")
    assert first == again
    batches = next(a for a in first if a.label == "Batch jobs")
    assert batches.count == 3 and batches.current
