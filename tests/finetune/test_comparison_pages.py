"""The adapter page's attach/detach and comparison forms, the comparison page, and the
comparison API (training runtime faked as in test_comparisons.py)."""

import json
from pathlib import Path

import pytest
from django.test import Client

from apps.audit.models import AuditEvent
from apps.finetune import comparisons, jobs
from apps.finetune.models import Adapter, AdapterComparison
from apps.generation.models import ModelTarget
from tests.factories import PASSWORD, UserFactory
from tests.finetune import fake_training
from tests.finetune.conftest import chat, jsonl, make_dataset, upload
from tests.finetune.test_comparisons import Generations

A = "/api/v1/squads/acme/adapters"


def client_for(name: str) -> Client:
    client = Client()
    assert client.login(username=UserFactory(username=name).username, password=PASSWORD)
    return client


@pytest.fixture
def script(monkeypatch):
    s = fake_training.Script()
    fake_training.install(monkeypatch, s)
    from workers.runtime import backends

    monkeypatch.setattr(backends, "run_conversations", Generations())
    return s


@pytest.fixture
def adapter(squad, script) -> Adapter:
    rows = [chat(f"question {i}", f"answer {i}") for i in range(10)]
    version = upload(make_dataset(squad), jsonl(*rows), eval_fraction=0.2)
    job = jobs.finetune_job_create(
        actor=UserFactory(username="engineer"), dataset_version=version, train={"max_steps": 2}
    )
    jobs.finetune_job_run(job_id=job.pk)
    return Adapter.objects.get(job=job)


def page(adapter: Adapter) -> str:
    return f"/squads/acme/finetune/adapters/{adapter.pk}/"


def eval_row_numbers(adapter: Adapter) -> list[int]:
    lines = Path(adapter.dataset_version.path).read_text().splitlines()
    return [n for n, line in enumerate(lines, start=1) if json.loads(line)["split"] == "eval"]


def test_owner_attaches_an_approved_adapter_and_detaches_it(squad, adapter):
    target = ModelTarget.objects.create(
        squad=squad, name="tuned", kind="local", base_model="smollm2-135m-instruct"
    )
    ModelTarget.objects.create(squad=squad, name="other-base", kind="local", base_model="x")
    owner = client_for("owner")
    unapproved = owner.get(page(adapter)).content.decode()
    assert "It can be attached once approved" in unapproved
    refused = owner.post(f"{page(adapter)}attach", {"target": "tuned"})
    assert refused.status_code == 409 and b"is not approved" in refused.content

    jobs.adapter_approve(actor=UserFactory(username="compliance"), adapter=adapter)
    html = owner.get(page(adapter)).content.decode()
    # Only the squad's own local targets of the adapter's base model are offered.
    assert '<option value="tuned">' in html and "other-base" not in html
    assert "Not on any model target" in html
    unknown = owner.post(f"{page(adapter)}attach", {"target": "nope"})
    assert unknown.status_code == 422 and b"has no model target" in unknown.content

    done = owner.post(f"{page(adapter)}attach", {"target": "tuned"})
    assert done.status_code == 302 and done["Location"] == page(adapter)
    target.refresh_from_db()
    assert target.lora_adapter_id == adapter.pk
    event = AuditEvent.objects.filter(action="generation.target_adapter_set").latest("pk")
    assert event.data["adapter"] == adapter.pk and event.data["sha256"] == adapter.sha256
    html = owner.get(page(adapter)).content.decode()
    assert "Detach from tuned" in html

    done = owner.post(f"{page(adapter)}attach", {"target": "tuned", "detach": "1"})
    assert done.status_code == 302
    target.refresh_from_db()
    assert target.lora_adapter is None
    again = owner.post(f"{page(adapter)}attach", {"target": "tuned", "detach": "1"})
    assert again.status_code == 422 and b"is not on target" in again.content


def test_only_target_managers_attach(squad, adapter):
    ModelTarget.objects.create(
        squad=squad, name="tuned", kind="local", base_model="smollm2-135m-instruct"
    )
    jobs.adapter_approve(actor=UserFactory(username="compliance"), adapter=adapter)
    engineer = client_for("engineer")
    assert b"Attach" not in engineer.get(page(adapter)).content
    assert engineer.post(f"{page(adapter)}attach", {"target": "tuned"}).status_code == 403
    assert client_for("outsider").post(
        f"{page(adapter)}attach", {"target": "tuned"}
    ).status_code == (404)
    assert ModelTarget.objects.get(name="tuned").lora_adapter is None


def test_comparison_from_the_page_polls_until_done(squad, adapter):
    engineer = client_for("engineer")
    assert b"Compare with the base model" in engineer.get(page(adapter)).content
    row = eval_row_numbers(adapter)[0]
    response = engineer.post(
        f"{page(adapter)}comparisons",
        {
            "prompts": "Where is my parcel?\n\nHow late is it?\n",
            "eval_rows": str(row),
            "max_new_tokens": "32",
            "temperature": "0",
            "top_p": "1",
            "seed": "7",
        },
    )
    comparison = AdapterComparison.objects.get()
    url = f"{page(adapter)}comparisons/{comparison.pk}/"
    assert response.status_code == 302 and response["Location"] == url
    assert [i["source"] for i in comparison.inputs] == ["prompt", "prompt", f"eval row {row}"]
    assert comparison.params == {"max_new_tokens": 32, "temperature": 0.0, "top_p": 1.0, "seed": 7}

    viewer = client_for("viewer")
    queued = viewer.get(url).content.decode()
    assert "Waiting for a worker." in queued and 'hx-trigger="every 2s"' in queued
    comparisons.adapter_comparison_run(comparison_id=comparison.pk)
    partial = viewer.get(url, headers={"HX-Request": "true", "HX-Target": "comparison"})
    html = partial.content.decode()
    assert "<h1>" not in html and 'id="comparison"' in html
    assert "every 2s" not in html  # finished: no more polling
    assert "2.0000" in html and "1.5000" in html and "-0.5000" in html
    assert "base: Where is my parcel?" in html
    assert f"adapter-{adapter.pk}: How late is it?" in html
    assert "Reference answer" in html
    listed = viewer.get(page(adapter)).content.decode()
    assert f"Comparison {comparison.pk}" in listed and "Compare with the base model" not in listed
    assert client_for("outsider").get(url).status_code == 404


def test_comparison_form_errors_inline(squad, adapter):
    engineer = client_for("engineer")
    bad = engineer.post(f"{page(adapter)}comparisons", {"prompts": "hi", "eval_rows": "3, x"})
    assert bad.status_code == 422
    html = bad.content.decode()
    assert "<code>eval_rows[1]</code>" in html and "got &#x27;x&#x27;" in html
    assert ">hi</textarea>" in html  # what was typed stays
    train_row = next(n for n in range(1, 11) if n not in eval_row_numbers(adapter))
    wrong = engineer.post(f"{page(adapter)}comparisons", {"eval_rows": str(train_row)})
    assert wrong.status_code == 422 and b"in the train split" in wrong.content
    hot = engineer.post(f"{page(adapter)}comparisons", {"prompts": "hi", "temperature": "hot"})
    assert hot.status_code == 422 and b"params.temperature" in hot.content
    assert client_for("viewer").post(f"{page(adapter)}comparisons", {}).status_code == 403
    assert not AdapterComparison.objects.exists()


def test_comparison_api(squad, adapter, api_as):
    engineer = api_as("engineer")
    row = eval_row_numbers(adapter)[0]
    response = engineer.call(
        "POST",
        f"{A}/{adapter.pk}/comparisons",
        {"prompts": ["Hello?"], "eval_rows": [row], "params": {"seed": 5}},
    )
    assert response.status_code == 201, response.content
    body = response.json()
    assert body["status"] == "queued" and body["adapter_sha256"] == adapter.sha256
    assert body["params"] == {"max_new_tokens": 128, "temperature": 0.0, "top_p": 1.0, "seed": 5}
    comparisons.adapter_comparison_run(comparison_id=body["id"])
    viewer = api_as("viewer")
    done = viewer.call("GET", f"{A}/{adapter.pk}/comparisons/{body['id']}").json()
    assert done["status"] == "succeeded"
    assert (done["base_loss"], done["adapter_loss"], done["loss_delta"]) == (2.0, 1.5, -0.5)
    assert done["eval_rows"] == 2 and len(done["outputs"]) == 2
    assert done["outputs"][0] == {
        "input": "Hello?",
        "source": "prompt",
        "reference": "",
        "base": "base: Hello?",
        "adapter": f"adapter-{adapter.pk}: Hello?",
        "base_error": "",
        "adapter_error": "",
    }
    listed = viewer.call("GET", f"{A}/{adapter.pk}/comparisons").json()
    assert [c["id"] for c in listed] == [body["id"]]

    bad = engineer.call("POST", f"{A}/{adapter.pk}/comparisons", {"eval_rows": [99]})
    assert bad.status_code == 422 and bad.json()["field"] == "eval_rows[0]"
    refused = viewer.call("POST", f"{A}/{adapter.pk}/comparisons", {"prompts": ["x"]})
    assert refused.status_code == 403
    missing = viewer.call("GET", f"{A}/{adapter.pk}/comparisons/999")
    assert missing.status_code == 404


def test_comparison_lists_cost_the_same_for_one_or_many(squad, adapter, api_as):
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    viewer = api_as("viewer")
    browser = client_for("viewer")

    def costs() -> tuple[int, int]:
        with CaptureQueriesContext(connection) as api_queries:
            assert viewer.call("GET", f"{A}/{adapter.pk}/comparisons").status_code == 200
        with CaptureQueriesContext(connection) as page_queries:
            assert browser.get(page(adapter)).status_code == 200
        return len(api_queries), len(page_queries)

    engineer = UserFactory(username="engineer")
    comparisons.adapter_comparison_create(actor=engineer, adapter=adapter, prompts=["a"])
    costs()  # token, session and permission caches filled
    one = costs()
    for text in ("b", "c", "d"):
        comparisons.adapter_comparison_create(actor=engineer, adapter=adapter, prompts=[text])
    assert costs() == one
