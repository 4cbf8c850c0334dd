"""Pages: the feedback panel, the alerts page (acknowledge, rule), the banner, the links."""

import pytest
from django.test import Client

from apps.feedback import services
from apps.feedback.models import Alert, AlertRule, Feedback
from tests.factories import UserFactory
from tests.feedback import factories as f

HTMX = {"HX-Request": "true"}


def _client(username: str) -> Client:
    client = Client()
    client.force_login(UserFactory(username=username))
    return client


def _alert(squad) -> Alert:
    return Alert.objects.create(
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


def test_generation_page_loads_the_feedback_panel(squad):
    generation = f.generation(squad)
    page = _client("viewer").get(f"/squads/acme/generations/{generation.pk}").content.decode()
    assert f'hx-get="/squads/acme/generations/{generation.pk}/feedback"' in page


def test_feedback_form_saves_and_refuses_inline(squad):
    generation = f.generation(squad, output="abc")
    url = f"/squads/acme/generations/{generation.pk}/feedback"
    client = _client("sme")
    panel = client.get(url, headers=HTMX).content.decode()
    assert "No feedback yet" in panel and "Save feedback" in panel
    bad = client.post(
        url, {"kind": "score", "score": "9", "scale_min": "1", "scale_max": "5"}, headers=HTMX
    )
    assert bad.status_code == 422
    assert "score: score 9 is outside the scale 1..5" in bad.content.decode()
    saved = client.post(
        url, {"kind": "score", "score": "4", "scale_min": "1", "scale_max": "5"}, headers=HTMX
    )
    assert saved.status_code == 200 and "Feedback saved." in saved.content.decode()
    client.post(url, {"kind": "edit", "edited_text": "abd", "comment": "typo"}, headers=HTMX)
    client.post(url, {"kind": "thumbs", "thumbs": "down"})
    rows = list(Feedback.objects.order_by("pk"))
    assert [(r.kind, r.value) for r in rows] == [
        ("score", 0.75),
        ("edit", pytest.approx(2 / 3)),
        ("thumbs", 0.0),
    ]
    assert rows[1].edit_distance == 1 and rows[1].comment == "typo"
    compact = client.get(url + "?compact=1", headers=HTMX).content.decode()
    assert "Save feedback" not in compact and "1 character changed" in compact


def test_review_item_page_shows_the_generations_feedback(squad):
    from apps.reviews.services import queues

    generation = f.generation(squad)
    owner = UserFactory(username="owner")
    queue = queues.review_queue_create(
        actor=owner, squad=squad, name="Q", rubric=[], overlap=1, annotator_roles=["sme"]
    )
    added = queues.review_items_add(actor=owner, queue=queue, generations=[generation])
    page = _client("owner").get(f"/squads/acme/review-queues/q/items/{added.ids[0]}")
    assert f"/squads/acme/generations/{generation.pk}/feedback?compact=1" in page.content.decode()


def test_alerts_page_acknowledge_and_banner(squad):
    alert = _alert(squad)
    viewer = _client("viewer")
    page = viewer.get("/squads/acme/alerts/").content.decode()
    assert "support v1" in page and "Acknowledge</button>" not in page
    assert "support v1: approval rate down 33 %" in page  # the banner
    compliance = _client("compliance")
    assert "Acknowledge</button>" in compliance.get("/squads/acme/alerts/").content.decode()
    done = compliance.post(f"/squads/acme/alerts/{alert.pk}/acknowledge", {"note": "retrained"})
    assert done.status_code == 302
    alert.refresh_from_db()
    assert alert.acknowledged_by.username == "compliance" and alert.note == "retrained"
    # the banner's cache was dropped with the acknowledgement
    assert "alert-banner" not in viewer.get("/squads/acme/alerts/").content.decode()
    again = compliance.post(f"/squads/acme/alerts/{alert.pk}/acknowledge")
    assert again.status_code == 409 and "already acknowledged" in again.content.decode()
    assert viewer.post(f"/squads/acme/alerts/{alert.pk}/acknowledge").status_code == 403
    listed = viewer.get("/squads/acme/alerts/?state=acknowledged").content.decode()
    assert "retrained" in listed


def test_banner_is_read_from_the_cache(squad, django_assert_num_queries):
    _alert(squad)
    client = _client("sme")
    client.get("/squads/acme/")
    from apps.feedback.selectors import open_alerts_for_squads

    with django_assert_num_queries(0):
        assert len(open_alerts_for_squads([squad])) == 1


def test_rule_form(squad):
    client = _client("engineer")
    bad = client.post(
        "/squads/acme/alerts/rule",
        {"threshold": "0.2", "window": "10", "baseline_size": "100", "min_samples": "50"},
    )
    assert bad.status_code == 422 and "cannot exceed the window" in bad.content.decode()
    assert not AlertRule.objects.exists()
    ok = client.post(
        "/squads/acme/alerts/rule",
        {
            "threshold": "0.25",
            "window": "60",
            "baseline_size": "60",
            "min_samples": "30",
            "enabled": "on",
        },
    )
    assert ok.status_code == 302
    assert services.rule_of(squad.pk).threshold == 0.25
    page = _client("viewer").get("/squads/acme/alerts/").content.decode()
    assert "25 %" in page and 'id="rule-form"' not in page


def test_prompt_page_links_to_the_dashboard(squad):
    f.version(squad)
    page = _client("viewer").get("/squads/acme/prompts/support/").content.decode()
    assert 'href="/squads/acme/prompts/support/dashboard"' in page
    empty = _client("viewer").get("/squads/acme/prompts/support/dashboard")
    assert empty.status_code == 200 and "No data in this range" in empty.content.decode()


def test_admin_acknowledges_through_the_service(squad):
    alert = _alert(squad)
    staff = Client()
    staff.force_login(UserFactory(username="root", is_staff=True, is_superuser=True))
    listing = staff.get("/admin/feedback/alert/")
    assert listing.status_code == 200
    done = staff.post(
        "/admin/feedback/alert/", {"action": "acknowledge", "_selected_action": [alert.pk]}
    )
    assert done.status_code == 302
    alert.refresh_from_db()
    assert alert.acknowledged_by.username == "root"
    from apps.audit.models import AuditEvent

    assert AuditEvent.objects.filter(action="alert.acknowledged").count() == 1


def test_rule_form_with_a_non_decimal_digit_is_refused_not_a_500(squad):
    # "²".isdigit() is true, but int("²") raises.
    response = _client("engineer").post(
        "/squads/acme/alerts/rule",
        {"threshold": "0.2", "window": "²", "baseline_size": "100", "min_samples": "50"},
    )
    assert response.status_code == 422
    assert "window must be a whole number" in response.content.decode()
    assert not AlertRule.objects.exists()


def test_admin_feedback_list_costs_the_same_however_many_rows(squad):
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    staff = Client()
    staff.force_login(UserFactory(username="root", is_staff=True, is_superuser=True))
    f.feedback_rows(f.generation(squad), [0.5])
    with CaptureQueriesContext(connection) as one:
        assert staff.get("/admin/feedback/feedback/").status_code == 200
    for _ in range(4):
        f.feedback_rows(f.generation(squad), [0.5])
    with CaptureQueriesContext(connection) as five:
        assert staff.get("/admin/feedback/feedback/").status_code == 200
    assert len(five) == len(one)


def test_rule_form_with_more_digits_than_int_converts_is_refused_not_a_500(squad):
    # int() refuses strings of more than 4,300 digits (ValueError).
    response = _client("engineer").post(
        "/squads/acme/alerts/rule",
        {"threshold": "0.2", "window": "9" * 5000, "baseline_size": "100", "min_samples": "50"},
    )
    assert response.status_code == 422
    assert "window must be a whole number" in response.content.decode()
    assert not AlertRule.objects.exists()
