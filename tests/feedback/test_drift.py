"""The drift rule on synthetic series, then the inline check through the services."""

import random

import pytest

from apps.audit.models import AuditEvent
from apps.feedback import drift, services
from apps.feedback.models import Alert
from apps.reviews.services import queues as review_services
from tests.factories import UserFactory
from tests.feedback import factories as f

RULE = drift.DEFAULT_RULE


def _noise(seed: int, n: int, mean: float, spread: float) -> list[float]:
    rng = random.Random(seed)
    return [min(1.0, max(0.0, rng.gauss(mean, spread))) for _ in range(n)]


def _bernoulli(seed: int, n: int, p: float) -> list[float]:
    rng = random.Random(seed)
    return [1.0 if rng.random() < p else 0.0 for _ in range(n)]


def _ever_alerts(samples: list[float], rule: drift.DriftRule = RULE) -> bool:
    """The check as it runs in production: after every new sample."""
    return any(drift.detect_series(samples[:k], rule).drifted for k in range(1, len(samples) + 1))


@pytest.mark.parametrize("seed", range(5))
def test_no_alert_on_noise_around_a_stable_mean(seed):
    assert not _ever_alerts(_noise(seed, 400, 0.75, 0.15))


@pytest.mark.parametrize("seed", range(5))
def test_no_alert_on_approvals_at_a_stable_rate(seed):
    assert not _ever_alerts(_bernoulli(seed, 400, 0.8))


def test_a_drop_within_the_threshold_does_not_alert():
    # 0.80 -> 0.70 is a 12.5 % drop: real, significant with 100 samples a side, but under 15 %.
    samples = [0.8] * 100 + [0.7] * 100
    found = drift.detect_series(samples)
    assert not found.drifted and found.drop == pytest.approx(0.125)
    assert "within 15%" in found.reason


@pytest.mark.parametrize("seed", range(3))
def test_a_real_drop_alerts(seed):
    samples = _noise(seed, 100, 0.8, 0.1) + _noise(seed + 100, 100, 0.55, 0.1)
    found = drift.detect_series(samples)
    assert found.drifted, found.reason
    assert found.baseline == pytest.approx(0.8, abs=0.03)
    assert found.current == pytest.approx(0.55, abs=0.03)
    assert found.drop > 0.15
    assert found.baseline_samples == 100 and found.window_samples == 100


def test_a_fall_in_approvals_alerts_once_the_window_holds_it():
    samples = _bernoulli(1, 100, 0.85) + _bernoulli(2, 100, 0.5)
    assert _ever_alerts(samples)


def test_too_few_samples_never_alert():
    rule = drift.DriftRule(window=100, baseline_size=100, min_samples=50)
    # A complete collapse, but only 49 samples after the baseline.
    found = drift.detect_series([1.0] * 100 + [0.0] * 49, rule)
    assert not found.drifted and "49 of at least 50" in found.reason
    found = drift.detect_series([1.0] * 99, rule)
    assert not found.drifted and "baseline has 99 of 100" in found.reason
    assert drift.detect_series([1.0] * 100 + [0.0] * 50, rule).drifted


def test_a_large_relative_drop_inside_the_noise_does_not_alert():
    rule = drift.DriftRule(window=4, baseline_size=4, min_samples=4)
    # 0.5 -> 0.25 is a 50 % drop, but four 1/0 samples a side cannot tell.
    found = drift.detect_series([1, 0, 1, 0, 0, 1, 0, 0], rule)
    assert not found.drifted and "not significant" in found.reason


# --- through the services ---------------------------------------------------------------------


@pytest.fixture
def small_rule(squad):
    services.alert_rule_update(
        actor=UserFactory(username="owner"),
        squad=squad,
        threshold=0.15,
        window=20,
        baseline_size=20,
        min_samples=10,
    )


def _feedback(generation, thumbs: list[int]) -> None:
    viewer = UserFactory(username="viewer")
    for t in thumbs:
        services.feedback_submit(actor=viewer, generation=generation, thumbs=t)


def test_feedback_drop_raises_one_alert_audited_with_a_banner(squad, small_rule, client):
    generation = f.generation(squad)
    _feedback(generation, [1] * 20)  # the baseline: all up
    _feedback(generation, [1, -1] * 4)  # 8 in the window: too few to judge
    assert not Alert.objects.exists()
    _feedback(generation, [-1, -1])  # 10 in the window, 40 % up: a 60 % drop
    alert = Alert.objects.get()
    assert (
        alert.metric == "feedback_score" and alert.prompt_version_id == generation.prompt_version_id
    )
    assert alert.baseline == 1.0 and alert.current == pytest.approx(0.4)
    assert alert.drop == pytest.approx(0.6)
    assert alert.baseline_samples == 20 and alert.window_samples == 10
    assert alert.rule["window"] == 20
    event = AuditEvent.objects.get(action="alert.raised")
    assert event.data["metric"] == "feedback_score" and event.data["version"] == 1
    # no duplicate while it is open
    _feedback(generation, [-1] * 15)
    assert Alert.objects.count() == 1

    client.force_login(UserFactory(username="sme"))
    page = client.get("/squads/acme/").content.decode()
    assert 'class="alert-banner"' in page and "support v1: feedback score down 60 %" in page
    outsider = UserFactory(username="outsider")
    client.force_login(outsider)
    assert "alert-banner" not in client.get("/").content.decode()


def test_acknowledge_then_only_new_samples_can_raise_again(squad, small_rule, api_as):
    generation = f.generation(squad)
    _feedback(generation, [1] * 20 + [-1] * 10)
    alert = Alert.objects.get()
    refused = api_as("sme").call(
        "POST", f"/api/v1/squads/acme/alerts/{alert.pk}/acknowledge", {"note": "seen"}
    )
    assert refused.status_code == 403
    done = api_as("compliance").call(
        "POST", f"/api/v1/squads/acme/alerts/{alert.pk}/acknowledge", {"note": "new model"}
    )
    assert done.status_code == 200, done.content
    body = done.json()
    assert body["acknowledged_by"] == "compliance" and body["note"] == "new model"
    assert AuditEvent.objects.filter(action="alert.acknowledged").count() == 1
    again = api_as("owner").call("POST", f"/api/v1/squads/acme/alerts/{alert.pk}/acknowledge", {})
    assert again.status_code == 409, again.content
    # The bad samples that raised it do not raise a second alert; nine new ones are too few.
    _feedback(generation, [-1] * 9)
    assert Alert.objects.count() == 1
    _feedback(generation, [-1])
    assert Alert.objects.count() == 2
    listed = api_as("viewer").call("GET", "/api/v1/squads/acme/alerts?state=all").json()
    assert [a["id"] for a in listed][1] == alert.pk
    open_ = api_as("viewer").call("GET", "/api/v1/squads/acme/alerts").json()
    assert len(open_) == 1 and open_[0]["acknowledged_at"] is None


def test_disabled_rule_never_raises(squad):
    services.alert_rule_update(
        actor=UserFactory(username="compliance"),
        squad=squad,
        threshold=0.15,
        window=10,
        baseline_size=10,
        min_samples=10,
        enabled=False,
    )
    _feedback(f.generation(squad), [1] * 10 + [-1] * 10)
    assert not Alert.objects.exists()


def test_approval_drop_from_annotations_raises(squad, small_rule):
    version = f.version(squad)
    queue = f.queue(squad)
    f.judged_items(queue, version, [True] * 20 + [False] * 9)
    assert not Alert.objects.exists()
    item = review_services.review_items_add_external(
        actor=UserFactory(username="owner"),
        queue=queue,
        items=[
            {"inputs": {}, "output": "x", "prompt_version": {"prompt": "support", "version": 1}}
        ],
    )
    from apps.reviews.models import ReviewItem

    added = ReviewItem.objects.get(pk=item.ids[0])
    assert added.prompt_version_id == version.pk
    review_services.review_annotate(
        actor=UserFactory(username="sme"), item=added, verdict="reject", scores={}
    )
    alert = Alert.objects.get()
    assert alert.metric == "approval_rate" and alert.current == 0.0 and alert.baseline == 1.0


def test_alert_emits_a_webhook(squad, small_rule):
    webhooks = pytest.importorskip("apps.webhooks.models")
    hook = webhooks.Webhook.objects.create(
        squad=squad, url="https://example.com/hook", events=["alert.raised"], secret="s" * 32
    )
    _feedback(f.generation(squad), [1] * 20 + [-1] * 10)
    delivery = webhooks.WebhookDelivery.objects.get(webhook=hook)
    assert delivery.event == "alert.raised"
    data = delivery.payload["data"]
    assert data["metric"] == "feedback_score" and data["prompt"] == "support"
    assert data["url"] == "/squads/acme/alerts/"


@pytest.mark.parametrize(
    ("fields", "field"),
    [
        ({"threshold": 0}, "threshold"),
        ({"threshold": 1.5}, "threshold"),
        ({"threshold": "15%"}, "threshold"),
        ({"window": 1}, "window"),
        ({"baseline_size": True}, "baseline_size"),
        ({"min_samples": 200}, "min_samples"),
        ({"enabled": "yes"}, "enabled"),
    ],
)
def test_rule_validation(squad, api_as, fields, field):
    body = {"threshold": 0.15, "window": 100, "baseline_size": 100, "min_samples": 50, **fields}
    response = api_as("owner").call("PUT", "/api/v1/squads/acme/alert-rule", body)
    assert response.status_code == 422 and response.json()["field"] == field


def test_rule_read_and_write(squad, api_as):
    assert api_as("viewer").call("GET", "/api/v1/squads/acme/alert-rule").json() == (
        drift.DEFAULT_RULE.as_dict()
    )
    body = {"threshold": 0.2, "window": 60, "baseline_size": 80, "min_samples": 30}
    done = api_as("engineer").call("PUT", "/api/v1/squads/acme/alert-rule", body)
    assert done.status_code == 200 and done.json() == {**body, "enabled": True}
    assert api_as("sme").call("PUT", "/api/v1/squads/acme/alert-rule", body).status_code == 403
    assert AuditEvent.objects.filter(action="alert.rule_updated").count() == 1
