"""Feedback and the dashboard in a real browser (Debian's chromium)."""

import pytest
from django.core.management import call_command
from playwright.sync_api import expect

from apps.generation.models import Generation
from apps.squads.management.commands.seed_demo import DEMO_PASSWORD

pytestmark = pytest.mark.browser


def test_feedback_on_a_generation_and_the_dashboard(page, login, live_server):
    call_command("seed_demo")
    generation = Generation.objects.filter(squad__slug="demo").order_by("pk").first()
    login(page, "sam", DEMO_PASSWORD)
    page.goto(f"/squads/demo/generations/{generation.pk}")
    panel = page.locator(f"#feedback-{generation.pk}")
    expect(panel.get_by_role("heading", name="Feedback (1)")).to_be_visible()
    panel.get_by_label("Score value").fill("2")
    panel.get_by_role("radio", name="Score").check()
    panel.get_by_role("button", name="Save feedback").click()
    expect(panel.get_by_text("Feedback saved.")).to_be_visible()
    expect(panel.get_by_role("heading", name="Feedback (2)")).to_be_visible()

    page.goto("/squads/demo/prompts/summarise/")
    page.get_by_role("link", name="Dashboard").click()
    expect(page.get_by_role("heading", name="Dashboard: summarise")).to_be_visible()
    chart = page.get_by_role("img", name="Latency p50 (ms), v1, last 30 days")
    expect(chart).to_be_visible()
    assert page.locator("#chart-latency_p50 polyline").count() >= 1
    page.screenshot(path="/tmp/feedback-data/dashboard.png", full_page=True)
