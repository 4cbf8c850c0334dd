"""GET /metrics: who may scrape, and what a scrape shows after real requests."""

import pytest
from django.test import Client

pytestmark = pytest.mark.django_db


@pytest.fixture
def metrics_token(settings) -> str:
    settings.STUDIO_METRICS_TOKEN = "s3cret-metrics-token-0123456789abcdef"
    return settings.STUDIO_METRICS_TOKEN


def scrape(**extra) -> tuple[int, str]:
    response = Client().get("/metrics", **extra)
    return response.status_code, response.content.decode()


def test_bearer_token_is_accepted_from_any_address(metrics_token):
    status, body = scrape(
        REMOTE_ADDR="203.0.113.9", headers={"Authorization": f"Bearer {metrics_token}"}
    )
    assert status == 200
    assert "# TYPE studio_http_request_duration_seconds histogram" in body


@pytest.mark.parametrize(
    "header", ["Bearer wrong", "Bearer ", "Basic dXNlcjpwYXNz", "s3cret-metrics-token"]
)
def test_a_wrong_token_is_401_even_from_an_allowed_address(metrics_token, header):
    response = Client().get("/metrics", REMOTE_ADDR="127.0.0.1", headers={"Authorization": header})
    assert response.status_code == 401
    assert response["WWW-Authenticate"].startswith("Bearer")


def test_a_token_is_401_when_none_is_configured(settings):
    settings.STUDIO_METRICS_TOKEN = ""
    status, _ = scrape(REMOTE_ADDR="127.0.0.1", headers={"Authorization": "Bearer "})
    assert status == 401


@pytest.mark.parametrize("address", ["127.0.0.1", "::1", "10.1.2.3", "fd00::7"])
def test_allow_listed_addresses_need_no_token(settings, address):
    settings.STUDIO_METRICS_ALLOW = ["127.0.0.1/32", "::1", "10.0.0.0/8", "fd00::/8"]
    status, body = scrape(REMOTE_ADDR=address)
    assert status == 200 and "studio_celery_queue_depth" in body


def test_default_allow_list_is_loopback_only(settings):
    assert settings.STUDIO_METRICS_ALLOW == ["127.0.0.1/32", "::1/128"]
    assert scrape(REMOTE_ADDR="127.0.0.1")[0] == 200
    assert scrape(REMOTE_ADDR="::1")[0] == 200


@pytest.mark.parametrize("address", ["203.0.113.9", "10.0.0.1", "", "not-an-ip"])
def test_other_addresses_without_token_are_403(address):
    status, body = scrape(REMOTE_ADDR=address)
    assert status == 403 and "STUDIO_METRICS_ALLOW" in body


def test_forwarded_for_does_not_open_the_allow_list():
    status, _ = scrape(REMOTE_ADDR="203.0.113.9", HTTP_X_FORWARDED_FOR="127.0.0.1")
    assert status == 403


def test_only_get(metrics_token):
    response = Client().post("/metrics", headers={"Authorization": f"Bearer {metrics_token}"})
    assert response.status_code == 405


def test_request_latency_is_labelled_by_route_method_and_status_class(squad, samples):
    owner = Client()
    owner.force_login(squad.created_by)
    assert owner.get("/squads/acme/prompts/").status_code == 200
    assert owner.get("/squads/acme/prompts/").status_code == 200
    assert owner.get("/squads/nope/prompts/").status_code == 404
    assert owner.get("/no/such/page/at-all").status_code == 404
    assert owner.get("/").status_code == 200
    count = "studio_http_request_duration_seconds_count"
    route = "/squads/<slug:squad>/prompts/"
    assert samples.delta(count, view=route, method="GET", status="2xx") == 2
    assert samples.delta(count, view=route, method="GET", status="4xx") == 1
    assert samples.delta(count, view="<unmatched>", method="GET", status="4xx") == 1
    assert samples.delta(count, view="/", method="GET", status="2xx") == 1
    _, body = scrape(REMOTE_ADDR="127.0.0.1")
    lines = [line for line in body.splitlines() if line.startswith("studio_http_request")]
    # Bounded labels: route patterns, never the path (slugs, ids) a caller sent.
    assert lines and not any("acme" in line or "no/such" in line for line in lines)


def test_api_routes_are_labelled_by_pattern(squad, api_as, samples):
    from tests.generation.conftest import text_prompt

    text_prompt(squad, target="local")
    api = api_as("owner")
    assert api.call("GET", "/api/v1/squads/acme/prompts/writer?version=1").status_code == 200
    assert api.call("GET", "/api/v1/squads/acme/targets").status_code == 200
    count = "studio_http_request_duration_seconds_count"
    fetch = "/api/v1/squads/<slug:squad>/prompts/<slug:slug>"
    assert samples.delta(count, view=fetch, method="GET", status="2xx") == 1
    assert samples.delta(count, view="/api/v1/squads/<squad>/targets", method="GET", status="2xx")


def test_an_unreachable_broker_leaves_out_queue_depth_not_the_whole_scrape(settings):
    import socket

    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    settings.CELERY_BROKER_URL = f"redis://127.0.0.1:{port}/0"
    status, body = scrape(REMOTE_ADDR="127.0.0.1")
    assert status == 200
    assert "studio_review_backlog" in body
    assert 'studio_celery_queue_depth{queue="default"}' not in body
