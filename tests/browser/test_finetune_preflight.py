"""The fine-tune pre-flight in a real browser: the engineer opens the start form, sees
the job's steps and estimated time, sets max_seq_len to 16 — the panel (htmx, on change)
and then the Start button refuse it, naming the field, and nothing is queued; with 64
the job starts."""

import json

import pytest
from django.contrib.auth import get_user_model
from playwright.sync_api import expect

from apps.finetune import services as finetune
from apps.finetune.models import FineTuneJob
from apps.squads import services
from tests.conftest import _restore_default_targets

pytestmark = pytest.mark.browser
ANSWER = "The parcel left our warehouse this morning and arrives tomorrow."


@pytest.fixture
def squad(db, settings, tmp_path):
    settings.DATA_DIR = tmp_path
    # The live server's tests flush the tables after each test, migration rows included:
    # the global target and the default base model come back with the migrations' code.
    _restore_default_targets()
    User = get_user_model()
    olivia = User.objects.create_user("olivia", password="pw-olivia-123")
    priya = User.objects.create_user("priya", password="pw-priya-123")
    squad = services.squad_create(actor=olivia, name="Demo", slug="demo")
    services.membership_add(actor=olivia, squad=squad, user=priya, roles=["prompt_engineer"])
    dataset = finetune.dataset_create(
        actor=olivia, squad=squad, slug="parcels", name="Parcels", format="chat"
    )
    rows = [
        {
            "messages": [
                {"role": "user", "content": f"Where is parcel {i}?"},
                {"role": "assistant", "content": ANSWER},
            ]
        }
        for i in range(12)
    ]
    content = "".join(json.dumps(r) + "\n" for r in rows).encode()
    finetune.dataset_version_upload(
        actor=olivia, dataset=dataset, content=content, filename="rows.jsonl", eval_fraction=0.25
    )
    return squad


def test_preflight_refuses_max_seq_len_16(page, login, squad, monkeypatch):
    # Queuing is not what this test is about: keep the worker task from being sent.
    from apps.core import queues

    monkeypatch.setattr(queues, "send", lambda *a, **k: None)
    login(page, "priya", "pw-priya-123")
    page.goto("/squads/demo/finetune/")
    panel = page.locator("#preflight")
    expect(panel.locator("#plan-steps")).to_contain_text("3")
    expect(panel.locator("#plan-eta")).to_contain_text("tokens/s")

    page.get_by_label("Max sequence length (default 512)").fill("16")
    page.get_by_label("Max sequence length (default 512)").dispatch_event("change")
    expect(panel.get_by_role("alert")).to_contain_text("train.max_seq_len 16 is too short")

    page.get_by_role("button", name="Start fine-tune").click()
    expect(page.locator("#job-error")).to_contain_text("train.max_seq_len")
    expect(page.get_by_label("Max sequence length (default 512)")).to_have_attribute(
        "aria-invalid", "true"
    )
    assert not FineTuneJob.objects.exists()

    page.get_by_label("Max sequence length (default 512)").fill("64")
    page.get_by_role("button", name="Start fine-tune").click()
    expect(page.get_by_role("heading", name="Fine-tune job")).to_be_visible()
    assert FineTuneJob.objects.get().train["max_seq_len"] == 64
