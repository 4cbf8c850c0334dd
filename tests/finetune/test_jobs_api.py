"""Fine-tune jobs and adapters through the REST API and the pages (runtime faked as in
test_jobs.py)."""

import io
import json
import tarfile
import zipfile

import pytest
from django.test import Client

from apps.finetune import jobs
from apps.finetune.models import Adapter, FineTuneJob
from tests.factories import PASSWORD, UserFactory
from tests.finetune import fake_training
from tests.finetune.conftest import chat, jsonl, make_dataset, upload

J = "/api/v1/squads/acme/finetune-jobs"
A = "/api/v1/squads/acme/adapters"


@pytest.fixture
def script(monkeypatch):
    s = fake_training.Script()
    fake_training.install(monkeypatch, s)
    return s


@pytest.fixture
def version(squad):
    return upload(make_dataset(squad), jsonl(*[chat(f"q{i}", f"a{i}") for i in range(6)]))


def _start(api, **body):
    return api.call("POST", J, {"dataset": "support-chat", "train": {"max_steps": 4}, **body})


def test_start_follow_and_cancel_through_the_api(squad, version, script, api_as):
    engineer = api_as("engineer")
    response = _start(engineer, lora={"r": 4})
    assert response.status_code == 201, response.content
    job = response.json()
    assert job["status"] == "queued" and job["dataset_version"] == 1 and job["lora"]["r"] == 4
    assert api_as("viewer").call("GET", f"{J}/{job['id']}").json()["step"] == 0
    cancelled = engineer.call("POST", f"{J}/{job['id']}/cancel")
    assert cancelled.status_code == 200 and cancelled.json()["status"] == "cancelled"
    again = engineer.call("POST", f"{J}/{job['id']}/cancel")
    assert again.status_code == 409 and "already cancelled" in again.json()["detail"]
    assert api_as("outsider").call("GET", f"{J}/{job['id']}").status_code == 404
    assert api_as("viewer").call("GET", f"{J}/999").status_code == 404


def test_refusals_name_the_field(squad, version, script, api_as):
    engineer = api_as("engineer")
    bad = _start(engineer, lora={"r": 0})
    assert bad.status_code == 422 and bad.json()["field"] == "lora.r"
    assert _start(engineer, dataset="missing").status_code == 404
    assert _start(api_as("sme")).status_code == 403


def test_progress_log_adapter_approval_download_and_attach(squad, version, script, api_as):
    engineer = api_as("engineer")
    job_id = _start(engineer).json()["id"]
    jobs.finetune_job_run(job_id=job_id)
    job = api_as("viewer").call("GET", f"{J}/{job_id}").json()
    assert job["status"] == "succeeded" and job["step"] == 4 and job["total_steps"] == 4
    assert [p[0] for p in job["points"]] == [1, 2, 3, 4] and job["adapter"]
    log = engineer.call("GET", f"{J}/{job_id}/log")
    assert log["Content-Type"].startswith("text/plain") and b"training" in log.content
    adapter = engineer.call("GET", f"{A}/{job['adapter']}").json()
    assert adapter["approved"] is False and adapter["dataset"] == "support-chat"
    owner = api_as("owner")
    assert (
        owner.call(
            "POST", "/api/v1/squads/acme/targets", {"name": "tuned", "kind": "local"}
        ).status_code
        == 201
    )
    refused = owner.call(
        "PUT", "/api/v1/squads/acme/targets/tuned/adapter", {"adapter": adapter["id"]}
    )
    assert refused.status_code == 409
    assert refused.json()["detail"] == f"adapter {adapter['id']} is not approved"
    assert engineer.call("POST", f"{A}/{adapter['id']}/approval").status_code == 403
    approved = api_as("compliance").call("POST", f"{A}/{adapter['id']}/approval")
    assert approved.status_code == 200 and approved.json()["approved_by"] == "compliance"
    attached = owner.call(
        "PUT", "/api/v1/squads/acme/targets/tuned/adapter", {"adapter": adapter["id"]}
    )
    assert attached.status_code == 200 and attached.json() == {
        "target": "tuned",
        "adapter": adapter["id"],
    }
    tgz = engineer.client.get(adapter["download_tar_gz"], headers=engineer.headers)
    assert tgz.status_code == 200 and tgz["X-Adapter-SHA256"] == adapter["sha256"]
    with tarfile.open(fileobj=io.BytesIO(b"".join(tgz.streaming_content)), mode="r:gz") as t:
        assert t.getnames() == [f"adapter-{adapter['id']}/adapter_config.json"]
    zipped = engineer.client.get(adapter["download_zip"], headers=engineer.headers)
    names = zipfile.ZipFile(io.BytesIO(b"".join(zipped.streaming_content))).namelist()
    assert names == [f"adapter-{adapter['id']}/adapter_config.json"]
    assert (
        json.loads(
            zipfile.ZipFile(
                io.BytesIO(
                    b"".join(
                        engineer.client.get(
                            adapter["download_zip"], headers=engineer.headers
                        ).streaming_content
                    )
                )
            ).read(names[0])
        )["r"]
        == 8
    )


def _login(name: str) -> Client:
    client = Client()
    UserFactory(username=name)
    assert client.login(username=name, password=PASSWORD)
    return client


def test_pages_start_poll_cancel_and_approve(squad, version, script):
    engineer = _login("engineer")
    page = engineer.get("/squads/acme/finetune/")
    assert page.status_code == 200 and b"Start a fine-tune" in page.content
    refused = engineer.post(
        "/squads/acme/finetune/", {"dataset": "support-chat", "target_modules": "", "r": "x"}
    )
    assert refused.status_code == 422 and b"must be a number" in refused.content
    started = engineer.post("/squads/acme/finetune/", {"dataset": "support-chat", "max_steps": "4"})
    job = FineTuneJob.objects.get()
    assert started.status_code == 302 and started["Location"].endswith(f"/jobs/{job.pk}/")
    progress = engineer.get(
        f"/squads/acme/finetune/jobs/{job.pk}/",
        headers={"HX-Request": "true", "HX-Target": "progress"},
    )
    assert progress.status_code == 200 and b'hx-trigger="every 2s"' in progress.content
    assert b"<h1>" not in progress.content
    jobs.finetune_job_run(job_id=job.pk)
    page = engineer.get(f"/squads/acme/finetune/jobs/{job.pk}/")
    assert b"<polyline" in page.content and b"succeeded" in page.content
    assert b"every 2s" not in page.content and b"training smollm2" in page.content
    adapter = Adapter.objects.get()
    viewer_page = _login("viewer").get(f"/squads/acme/finetune/adapters/{adapter.pk}/")
    assert viewer_page.status_code == 200 and b"Approve adapter" not in viewer_page.content
    compliance = _login("compliance")
    assert (
        b"Approve adapter"
        in compliance.get(f"/squads/acme/finetune/adapters/{adapter.pk}/").content
    )
    assert compliance.post(f"/squads/acme/finetune/adapters/{adapter.pk}/").status_code == 302
    adapter.refresh_from_db()
    assert adapter.approved
    assert _login("outsider").get(f"/squads/acme/finetune/jobs/{job.pk}/").status_code == 404


def test_cancel_from_the_page(squad, version, script):
    engineer = _login("engineer")
    job = jobs.finetune_job_create(actor=UserFactory(username="engineer"), dataset_version=version)
    response = engineer.post(
        f"/squads/acme/finetune/jobs/{job.pk}/cancel", headers={"HX-Request": "true"}
    )
    assert response.status_code == 200 and b"cancelled" in response.content
    assert _login("sme").post(f"/squads/acme/finetune/jobs/{job.pk}/cancel").status_code == 403
