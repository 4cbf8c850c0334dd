"""Dashboard series on known data, the SVG charts and the pages."""

import re
from datetime import timedelta

import pytest
from django.test import Client
from django.utils import timezone

from apps.feedback import charts, selectors
from apps.prompts import services as prompts
from tests.factories import UserFactory
from tests.feedback import factories as f
from tests.prompts.factories import content


@pytest.fixture
def board_data(squad):
    """v1: 10 generations today with latencies 100..1000 ms, 10 in / 20 out tokens, cost
    0.001 each; one yesterday (50 ms); three annotated items today (2 approved, one of
    them by adjudication; one tie is not approved) and feedback 1, 0, 0.5 today.
    v2: two generations today at 2,000 and 4,000 ms."""
    now = timezone.now()
    v1 = f.version(squad)
    for latency in range(100, 1001, 100):
        f.generation(squad, latency_ms=latency)
    f.generation(squad, latency_ms=50, created_at=now - timedelta(days=1))
    f.generation(squad, latency_ms=99_999, status="failed")  # not measured
    queue = f.queue(squad)
    f.judged_items(queue, v1, [True, False])
    tie = f.judged_items(queue, v1, [True])[0]
    tie.annotation_count, tie.approvals = 2, 1
    tie.save()
    rejected_then_settled = f.judged_items(queue, v1, [False])[0]
    rejected_then_settled.adjudicated_verdict = "approve"
    rejected_then_settled.save()
    f.judged_items(queue, v1, [True], created_at=now - timedelta(days=40))  # out of range
    g = f.generation(squad, latency_ms=500)
    f.feedback_rows(g, [1.0, 0.0, 0.5])
    v2 = prompts.prompt_version_create(
        actor=UserFactory(username="owner"),
        template=v1.template,
        **content(commit_message="v2", model={"temperature": 0.2}),
    )
    f.generation(squad, prompt_version=v2, latency_ms=2000, cost="0.003")
    f.generation(squad, prompt_version=v2, latency_ms=4000, cost="0.005")
    return v1, v2


def test_percentile_cont_matches_postgresql():
    assert selectors.percentile_cont([], 0.5) is None
    assert selectors.percentile_cont([7], 0.95) == 7
    values = [100, 200, 300, 400, 500, 600, 700, 800, 900, 1000]
    assert selectors.percentile_cont(values, 0.5) == 550
    assert selectors.percentile_cont(values, 0.95) == pytest.approx(955)


def test_series_on_known_data(board_data):
    v1, _ = board_data
    owner = UserFactory(username="owner")
    board = selectors.template_dashboard(user=owner, template=v1.template, days=7)
    assert len(board.days) == 7 and board.days[-1] == timezone.localdate()
    one, two = board.stats_of(1), board.stats_of(2)
    s = one.series
    # today: 10 generations + the one that got feedback (500 ms)
    assert s["requests"][-1] == 11 and s["requests"][-2] == 1 and s["requests"][0] is None
    today = sorted([*range(100, 1001, 100), 500])
    assert s["latency_p50"][-1] == selectors.percentile_cont(today, 0.5) == 500
    assert s["latency_p95"][-1] == pytest.approx(selectors.percentile_cont(today, 0.95))
    assert s["latency_p50"][-2] == 50
    assert s["tokens_in"][-1] == 10 and s["tokens_out"][-1] == 20
    assert s["cost_per_1k"][-1] == pytest.approx(1.0)  # 0.001 per request
    assert s["approval_rate"][-1] == pytest.approx(2 / 4)
    assert s["feedback_score"][-1] == pytest.approx(0.5)
    assert one.summary["requests"] == 12
    assert one.summary["latency_p50"] == selectors.percentile_cont(sorted([50, *today]), 0.5)
    assert one.counts["approval_rate"] == 4 and one.counts["feedback_score"] == 3
    assert two.summary["latency_p50"] == 3000
    assert two.summary["latency_p95"] == pytest.approx(3900)
    assert two.summary["cost_per_1k"] == pytest.approx(4.0)
    assert two.summary["approval_rate"] is None and two.summary["feedback_score"] is None


def test_eval_pass_rate_series(board_data):
    evals = pytest.importorskip("apps.evals.models")
    v1, _ = board_data
    from apps.generation.models import ModelTarget

    target = ModelTarget.objects.get(name="local", squad__isnull=True)
    for passed, total, status in ((8, 10, "succeeded"), (1, 10, "succeeded"), (0, 10, "failed")):
        evals.EvalRun.objects.create(
            squad=v1.template.squad,
            version=v1,
            target=target,
            status=status,
            total=total,
            passed=passed,
            pass_rate=passed / total,
            finished_at=timezone.now(),
        )
    board = selectors.template_dashboard(user=UserFactory(username="viewer"), template=v1.template)
    assert board.has_evals
    assert board.stats_of(1).series["eval_pass_rate"][-1] == pytest.approx(9 / 20)
    assert board.stats_of(1).summary["eval_pass_rate"] == pytest.approx(0.45)


def test_range_is_checked(board_data):
    from apps.core.exceptions import ValidationFailed

    with pytest.raises(ValidationFailed) as refused:
        selectors.template_dashboard(
            user=UserFactory(username="owner"), template=board_data[0].template, days=12
        )
    assert refused.value.field == "range"


def test_line_chart_svg():
    days = [timezone.localdate() - timedelta(days=i) for i in range(3, -1, -1)]
    svg = charts.line_chart(
        chart_id="c",
        title="Latency <p50>",
        desc="Daily latency",
        days=days,
        lines=[charts.Line("v1", [100, None, 300, 400]), charts.Line("v2", [None, 50, None, 60])],
    )
    assert svg.startswith("<svg") and svg.endswith("</svg>")
    assert 'role="img"' in svg and '<title id="c-title">Latency &lt;p50&gt;</title>' in svg
    assert '<desc id="c-desc">Daily latency</desc>' in svg
    # a day without data breaks a line: v1 draws 300-400 only, v2 has no two days in a row;
    # every value still gets its marker
    assert svg.count("<polyline") == 1 and 'points="' in svg
    assert svg.count("<circle") == 5
    assert 'stroke-dasharray="6 4"' in svg  # the second line is dashed
    empty = charts.line_chart(chart_id="e", title="t", desc="d", days=days, lines=[])
    assert "No data in this range" in empty


def test_nice_ticks():
    assert charts.nice_ticks(0, 1) == [0, 0.25, 0.5, 0.75, 1.0]
    assert charts.nice_ticks(0, 955) == [0, 250, 500, 750, 1000]


def _client(username: str) -> Client:
    client = Client()
    client.force_login(UserFactory(username=username))
    return client


def test_dashboard_page_compares_two_versions(board_data):
    page = _client("viewer").get("/squads/acme/prompts/support/dashboard?range=7")
    assert page.status_code == 200
    body = page.content.decode()
    assert body.count("<svg") >= 8
    assert "v2 compared with v1" in body
    row = re.search(r"Latency p50 \(ms\)</th><td>([^<]*)</td><td>([^<]*)</td><td>([^<]*)", body)
    assert row.groups()[:2] == ("3,000", "500")
    assert row.group(3).strip() == "-2,500"
    assert 'id="version-summary"' in body and "Data table" in body
    one = _client("viewer").get("/squads/acme/prompts/support/dashboard?a=1&b=none")
    assert "compared with" not in one.content.decode()
    bad = _client("viewer").get("/squads/acme/prompts/support/dashboard?range=5")
    assert bad.status_code == 422
    assert _client("outsider").get("/squads/acme/prompts/support/dashboard").status_code == 404


def test_dashboard_api(board_data, api_as):
    body = api_as("viewer").call("GET", "/api/v1/squads/acme/prompts/support/dashboard?range=7")
    assert body.status_code == 200
    data = body.json()
    assert [v["version"] for v in data["versions"]] == [2, 1]
    assert data["versions"][1]["series"]["feedback_score"][-1] == 0.5
    assert len(data["days"]) == 7


def test_dashboard_query_count_is_fixed(board_data, django_assert_max_num_queries):
    client = _client("owner")
    client.get("/squads/acme/prompts/support/dashboard")
    with django_assert_max_num_queries(20) as first:
        client.get("/squads/acme/prompts/support/dashboard")
    v1 = board_data[0]
    for latency in range(30):
        f.generation(v1.template.squad, latency_ms=latency)
    with django_assert_max_num_queries(len(first.captured_queries)):
        client.get("/squads/acme/prompts/support/dashboard")


def test_dashboard_version_choice_with_a_non_decimal_digit_falls_back(board_data):
    # "²".isdigit() is true, but int("²") raises.
    page = _client("viewer").get("/squads/acme/prompts/support/dashboard?a=%C2%B2&b=%C2%B3")
    assert page.status_code == 200
    assert "v2 compared with v1" in page.content.decode()


def test_dashboard_version_choice_with_too_many_digits_falls_back(board_data):
    # int() refuses strings of more than 4,300 digits (ValueError).
    page = _client("viewer").get(f"/squads/acme/prompts/support/dashboard?a={'9' * 5000}")
    assert page.status_code == 200
    assert "v2 compared with v1" in page.content.decode()


def test_a_generation_stamped_after_today_has_no_bucket_and_breaks_nothing(squad):
    """A worker whose clock runs ahead can stamp a generation tomorrow: it counts in the
    range's totals but in no day (on PostgreSQL this was a KeyError)."""
    v1 = f.version(squad)
    f.generation(squad, latency_ms=300)
    f.generation(squad, latency_ms=700, created_at=timezone.now() + timedelta(days=2))
    board = selectors.template_dashboard(
        user=UserFactory(username="owner"), template=v1.template, days=7
    )
    assert board.versions
