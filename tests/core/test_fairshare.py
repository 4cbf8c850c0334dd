"""Fair share of GPU workers between squads (apps.core.fairshare, apps.core.jobs.claim_next)
and what a waiting job tells a person; in one process, claims made by hand."""

from datetime import timedelta

import pytest
from django.conf import settings
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from apps.audit.models import AuditEvent
from apps.core import jobs
from apps.core.exceptions import PermissionDenied, ValidationFailed
from apps.core.fairshare import QueuePositions, queue_position
from apps.core.models import GpuShare
from apps.core.queues import Queue
from apps.core.services import gpu_share_set
from apps.generation.models import BatchJob
from tests.core.conftest import queue
from tests.factories import UserFactory

pytestmark = pytest.mark.django_db


def claim() -> BatchJob | None:
    lease = jobs.claim_next(Queue.GPU)
    return lease.job if lease is not None else None


def finish(job: BatchJob, seconds: float) -> None:
    """Mark `job` as having run `seconds` of GPU time, just now."""
    now = timezone.now()
    BatchJob.objects.filter(pk=job.pk).update(
        status="succeeded", started_at=now - timedelta(seconds=seconds), finished_at=now
    )


def test_a_squad_with_many_queued_jobs_does_not_starve_one_with_a_single_job(two_squads):
    acme = queue(two_squads, "acme", 10)
    (beta,) = queue(two_squads, "beta")
    # Nobody has used the GPU yet: acme's first job goes first (it came first), then beta's.
    assert queue_position(beta).position == 2
    first = claim()
    assert first == acme[0]  # equal use so far: the oldest job
    assert queue_position(beta).position == 1
    assert "used less GPU time" in queue_position(acme[1]).reason
    finish(first, 30)
    assert claim() == beta  # second, not eleventh
    assert [claim() for _ in range(9)] == acme[1:]  # then acme's, first come first served
    assert claim() is None


def test_gpu_time_is_weighted_by_the_share_staff_set(two_squads):
    staff = UserFactory(username="platform", is_staff=True)
    acme_done, beta_done = queue(two_squads, "acme"), queue(two_squads, "beta")
    finish(acme_done[0], 300)
    finish(beta_done[0], 100)
    (acme,), (beta,) = queue(two_squads, "acme"), queue(two_squads, "beta")
    assert claim() == beta  # 100 s < 300 s
    BatchJob.objects.filter(pk=beta.pk).update(status="queued", started_at=None)
    gpu_share_set(actor=staff, squad_slug="acme", share=4, max_running=None)
    assert claim() == acme  # 300 s / 4 < 100 s / 1
    event = AuditEvent.objects.get(action="core.gpu_share_set")
    assert event.data == {
        "share": 4,
        "max_running": None,
        "before": {"share": 1, "max_running": None},
    }


def test_a_squad_at_its_limit_waits_and_the_others_go_ahead(two_squads, settings):
    staff = UserFactory(username="platform", is_staff=True)
    acme = queue(two_squads, "acme", 2)
    (beta,) = queue(two_squads, "beta")
    gpu_share_set(actor=staff, squad_slug="acme", share=1, max_running=1)
    assert claim() == acme[0]
    assert claim() == beta  # acme is at its limit of one running job
    waiting = queue_position(acme[1])
    assert waiting.position == 1 and "limit" in waiting.reason
    assert claim() is None  # acme's next waits for its running job
    finish(acme[0], 10)
    assert claim() == acme[1]
    # The installation's default applies to squads without their own limit.
    settings.STUDIO_GPU_MAX_RUNNING_PER_SQUAD = 1
    more = queue(two_squads, "beta", 2)
    BatchJob.objects.filter(pk=beta.pk).update(status="running")
    assert claim() is None and queue_position(more[0]).reason.startswith("Your squad runs 1")


def test_only_staff_set_a_share_and_bad_values_name_the_field(two_squads, squad):
    with pytest.raises(PermissionDenied):
        gpu_share_set(
            actor=UserFactory(username="owner"), squad_slug="acme", share=2, max_running=1
        )
    staff = UserFactory(username="platform", is_staff=True)
    for share, max_running, field in ((0, None, "share"), (2, 0, "max_running")):
        with pytest.raises(ValidationFailed) as caught:
            gpu_share_set(actor=staff, squad_slug="acme", share=share, max_running=max_running)
        assert caught.value.field == field
    assert not GpuShare.objects.exists()


def test_a_running_or_finished_job_has_no_queue_position(two_squads):
    (job,) = queue(two_squads, "acme")
    assert queue_position(job).reason == "Next in line: it starts when a GPU worker is free."
    claimed = claim()
    assert queue_position(claimed) is None


def test_a_queued_job_s_page_shows_its_position_and_why_it_waits(two_squads, client):
    (acme,) = queue(two_squads, "acme")
    beta = queue(two_squads, "beta", 2)
    client.force_login(UserFactory(username="engineer"))
    url = f"/squads/beta/batches/{beta[1].pk}/"
    page = client.get(url).content.decode()
    assert "Queued: position 3 of 3" in page
    assert "1 earlier job(s) of your squad (first come, first served)" in page
    claim()  # acme's job starts
    page = client.get(url, headers={"HX-Request": "true", "HX-Target": "progress"})
    assert "Queued: position 2 of 2" in page.content.decode()
    assert "Queued: position" not in client.get(f"/squads/acme/batches/{acme.pk}/").content.decode()


def test_the_api_sets_a_share_and_names_what_is_wrong(two_squads, api_as):
    UserFactory(username="platform", is_staff=True)
    api = api_as("platform")
    ok = api.call("PUT", "/api/v1/gpu-shares/beta", {"share": 3, "max_running": 2})
    assert ok.status_code == 200 and ok.json() == {"squad": "beta", "share": 3, "max_running": 2}
    bad = api.call("PUT", "/api/v1/gpu-shares/beta", {"share": 0})
    assert bad.status_code == 422 and bad.json()["field"] == "share"
    missing = api.call("PUT", "/api/v1/gpu-shares/nope", {"share": 1})
    assert missing.status_code == 404 and missing.json()["field"] == "squad"


def test_a_share_is_a_real_number_and_the_limit_fits_the_column(two_squads, api_as):
    """true and "5" are not numbers; a limit past what PostgreSQL's integer column holds
    was stored on SQLite and a 500 on PostgreSQL."""
    UserFactory(username="platform", is_staff=True)
    api = api_as("platform")
    for body, field in (
        ({"share": True}, "share"),
        ({"share": "5"}, "share"),
        ({"share": 5, "max_running": 9007199254740991}, "max_running"),
        ({"share": 5, "max_running": 4294967296}, "max_running"),
    ):
        response = api.call("PUT", "/api/v1/gpu-shares/beta", body)
        assert response.status_code == 422, (body, response.content)
        assert field in response.content.decode()


def test_the_api_shows_a_queued_job_s_position_and_why_it_waits(two_squads, api_as):
    (acme,) = queue(two_squads, "acme")
    beta = queue(two_squads, "beta", 2)
    api = api_as("engineer")
    detail = api.call("GET", f"/api/v1/squads/beta/batches/{beta[1].pk}").json()
    assert detail["queue"] == {
        "position": 3,
        "queued": 3,
        "reason": "Waiting for 1 earlier job(s) of your squad (first come, first served) "
        "and 1 job(s) of squads that used less GPU time for their share in the last "
        f"{settings.STUDIO_FAIR_SHARE_WINDOW_HOURS:g} h.",
    }
    listed = api.call("GET", "/api/v1/squads/beta/batches").json()
    assert {j["id"]: j["queue"]["position"] for j in listed} == {beta[0].pk: 2, beta[1].pk: 3}
    claim()  # acme's job starts: it is no longer queued, beta's move up
    assert api.call("GET", f"/api/v1/squads/acme/batches/{acme.pk}").json()["queue"] is None
    detail = api.call("GET", f"/api/v1/squads/beta/batches/{beta[1].pk}").json()
    assert (detail["queue"]["position"], detail["queue"]["queued"]) == (2, 2)


def test_a_list_reads_the_queue_once_however_many_jobs_wait(two_squads, api_as):
    api = api_as("engineer")
    queue(two_squads, "beta", 2)
    api.call("GET", "/api/v1/squads/beta/batches")  # token and permissions cached
    with CaptureQueriesContext(connection) as few:
        assert len(api.call("GET", "/api/v1/squads/beta/batches").json()) == 2
    queue(two_squads, "beta", 8)
    with CaptureQueriesContext(connection) as many:
        assert len(api.call("GET", "/api/v1/squads/beta/batches").json()) == 10
    assert len(many) == len(few)


@pytest.mark.parametrize("seed", range(5))
def test_positions_follow_the_pick_that_workers_use(two_squads, seed):
    """The one-pass simulation behind positions (a heap of squads) gives the order the
    claim rule `_pick` gives when it is run job by job, whatever the squads' use."""
    import random

    from apps.core.fairshare import _pick, _state

    rng = random.Random(seed)
    jobs_by_squad = {slug: queue(two_squads, slug, rng.randint(1, 5)) for slug in ("acme", "beta")}
    for slug in jobs_by_squad:
        if rng.random() < 0.7:
            finish(queue(two_squads, slug)[0], rng.randint(1, 400))
    squads, waiting, mean = _state(Queue.GPU)
    expected = []
    while waiting:
        picked = _pick(squads, waiting, limits=False)
        expected.append(picked.pk)
        waiting.remove(picked)
        squads[picked.squad_id].used += mean
    jobs_all = [j for queued in jobs_by_squad.values() for j in queued]
    positions = QueuePositions()
    got = sorted(jobs_all, key=lambda j: positions.of(j).position)
    assert [j.pk for j in got] == expected
