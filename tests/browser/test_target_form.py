"""The model target form in a real browser: changing the base model swaps the adapter
choice (htmx) for the adapters trained on that base's registration; the kind switch shows
the remote server's fields; a refused adapter is shown on the form."""

import pytest
from django.contrib.auth import get_user_model
from django.utils import timezone
from playwright.sync_api import expect

from apps.basemodels.models import BaseModel
from apps.finetune.models import Adapter, FineTuneJob
from apps.generation.models import ModelTarget
from apps.squads import services
from tests.basemodels.factories import ready_model
from tests.factories import UserFactory
from tests.finetune.conftest import chat, jsonl, make_dataset, upload

pytestmark = pytest.mark.browser
DEFAULT = "smollm2-135m-instruct"


def adapter_on(squad, owner, base_model: str, slug: str) -> Adapter:
    version = upload(make_dataset(squad, slug=slug), jsonl(chat("q", "a")))
    job = FineTuneJob.objects.create(
        squad=squad,
        dataset_version=version,
        target=ModelTarget.objects.get(name="local", squad__isnull=True),
        base_model=base_model,
        created_by=owner,
        status="succeeded",
    )
    return Adapter.objects.create(
        squad=squad,
        job=job,
        dataset_version=version,
        path="/nonexistent",
        sha256="a" * 64,
        size_bytes=1,
        base_model=base_model,
        base_model_sha256=BaseModel.objects.get(name=base_model).current.manifest_sha256,
        approved_at=timezone.now(),
    )


@pytest.fixture
def adapters(db, settings, tmp_path):
    settings.DATA_DIR = tmp_path
    owner = get_user_model().objects.create_user("olivia", password="pw-olivia-123")
    squad = services.squad_create(actor=owner, name="Demo", slug="demo")
    # tests.finetune.conftest.make_dataset creates datasets as the user 'owner'
    services.membership_add(
        actor=owner, squad=squad, user=UserFactory(username="owner"), roles=["owner"]
    )
    ready_model("other-model", licence="MIT")
    return {
        DEFAULT: adapter_on(squad, owner, DEFAULT, "ds-default"),
        "other-model": adapter_on(squad, owner, "other-model", "ds-other"),
    }


def test_the_adapter_choice_follows_the_base_model(page, login, adapters):
    login(page, "olivia", "pw-olivia-123")
    page.goto("/squads/demo/targets/")
    page.get_by_role("link", name="New target").click()
    adapter = page.locator("#t-adapter")
    base = page.locator("#t-base")
    expect(base).to_contain_text("licence MIT")
    base.select_option("other-model")
    expect(adapter.locator("option")).to_have_count(2)
    expect(adapter).to_contain_text(f"adapter {adapters['other-model'].pk}")
    base.select_option(DEFAULT)
    expect(adapter).to_contain_text(f"adapter {adapters[DEFAULT].pk}")
    expect(adapter).not_to_contain_text(f"adapter {adapters['other-model'].pk}")
    page.locator("#t-name").fill("tuned")
    adapter.select_option(str(adapters[DEFAULT].pk))
    page.get_by_role("button", name="Create target").click()
    expect(page.locator("#target-tuned")).to_contain_text(f"adapter {adapters[DEFAULT].pk}")
    # the remote kind shows the server's fields instead
    page.goto("/squads/demo/targets/new")
    page.locator("#t-kind").select_option("remote")
    expect(page.locator("#t-url")).to_be_visible()
    expect(page.locator("#t-base")).to_have_count(0)
    page.locator("#t-name").fill("remote-one")
    page.locator("#t-url").fill("ftp://nowhere")
    page.get_by_role("button", name="Create target").click()
    expect(page.locator("#target-error")).to_contain_text("base_url")
