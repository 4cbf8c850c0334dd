import hashlib

from django.core.files.uploadedfile import SimpleUploadedFile

from apps.finetune.models import DatasetVersion
from apps.generation.models import Generation
from tests.finetune.conftest import chat, jsonl, make_dataset
from tests.reviews import queue_factories as f

D = "/api/v1/squads/acme/datasets"


def _upload(c, content: bytes, filename: str = "rows.jsonl", slug: str = "support-chat", **form):
    return c.client.post(
        f"{D}/{slug}/versions",
        {"file": SimpleUploadedFile(filename, content), **form},
        headers=c.headers,
    )


def test_create_list_get(squad, api_as):
    engineer = api_as("engineer")
    response = engineer.call(
        "POST", D, {"slug": "support-chat", "name": "Support chat", "format": "chat"}
    )
    assert response.status_code == 201, response.content
    assert response.json()["latest_version"] is None
    assert engineer.call("GET", D).json()[0]["slug"] == "support-chat"
    assert api_as("viewer").call("GET", f"{D}/support-chat").json()["format"] == "chat"
    assert api_as("viewer").call("GET", f"{D}/missing").status_code == 404
    assert api_as("outsider").call("GET", D).status_code == 404
    refused = api_as("sme").call("POST", D, {"slug": "x", "name": "X", "format": "chat"})
    assert refused.status_code == 403
    body = {"slug": "vars", "name": "Vars", "format": "variables", "prompt": "support"}
    f.version(squad)
    created = engineer.call("POST", D, body)
    assert created.status_code == 201 and created.json()["prompt_version"] == 1


def test_upload_refusal_lists_lines(squad, api_as):
    make_dataset(squad)
    response = _upload(api_as("engineer"), jsonl(chat(), "{bad", {"messages": []}))
    assert response.status_code == 422
    body = response.json()
    assert body["errors"] == [
        {
            "line": 2,
            "message": "not valid JSON: Expecting property name enclosed in double "
            "quotes at column 2",
        },
        {"line": 3, "message": "messages must be a non-empty list"},
    ]
    assert body["error_count"] == 2 and body["field"] == "file"
    assert not DatasetVersion.objects.exists()


def test_upload_versions_preview_diff_download(squad, api_as):
    make_dataset(squad)
    c = api_as("engineer")
    first = _upload(
        c,
        jsonl(*(chat(user=f"q{i}") for i in range(5))),
        seed="3",
        eval_fraction="0.2",
        commit_message="five",
    )
    assert first.status_code == 201, first.content
    v1 = first.json()
    assert (v1["number"], v1["row_count"], v1["eval_count"]) == (1, 5, 1)
    assert v1["commit_message"] == "five" and v1["split_seed"] == 3
    second = _upload(c, jsonl(*(chat(user=f"q{i}") for i in range(1, 7))))
    assert second.json()["parent"] == 1
    viewer = api_as("viewer")
    versions = viewer.call("GET", f"{D}/support-chat/versions").json()
    assert [v["number"] for v in versions] == [2, 1]
    page = viewer.call("GET", f"{D}/support-chat/versions/2/rows?offset=4&limit=4").json()
    assert page["total"] == 6 and page["next_offset"] is None
    assert [r["messages"][1]["content"] for r in page["rows"]] == ["q5", "q6"]
    too_big = viewer.call("GET", f"{D}/support-chat/versions/2/rows?limit=1000")
    assert too_big.status_code == 422 and too_big.json()["field"] == "limit"
    diff = viewer.call("GET", f"{D}/support-chat/diff?from_version=1&to_version=2").json()
    assert (diff["added_count"], diff["removed_count"], diff["unchanged_count"]) == (2, 1, 4)
    assert diff["removed"][0]["row"]["messages"][1]["content"] == "q0"
    download = viewer.client.get(v1["download_url"], headers=viewer.headers)
    data = b"".join(download.streaming_content)
    assert hashlib.sha256(data).hexdigest() == v1["sha256"]
    assert api_as("sme").call("GET", f"{D}/support-chat/versions/9").status_code == 404
    assert _upload(api_as("sme"), jsonl(chat())).status_code == 403


def test_versions_from_review_export_and_batch_job(squad, api_as):
    from apps.reviews.models import ReviewItem
    from apps.reviews.services import queues
    from tests.factories import UserFactory

    make_dataset(squad)
    queue = f.queue(squad, overlap=1, rubric=[])
    generated = f.generation(squad)
    queues.review_items_add(
        actor=UserFactory(username="owner"), queue=queue, generations=[generated]
    )
    queues.review_annotate(
        actor=UserFactory(username="sme"),
        item=ReviewItem.objects.get(generation=generated),
        verdict="approve",
        scores={},
    )
    export = queues.review_export(actor=UserFactory(username="owner"), queue=queue)
    c = api_as("engineer")
    response = c.call(
        "POST",
        f"{D}/support-chat/versions/from-review-export",
        {"queue": queue.slug, "export": export.pk},
    )
    assert response.status_code == 201, response.content
    assert response.json()["source_ref"]["export"] == export.pk
    job = f.batch(squad, [Generation.Status.OK])
    response = c.call("POST", f"{D}/support-chat/versions/from-batch-job", {"batch_job": job.pk})
    assert response.status_code == 201, response.content
    assert response.json()["source"] == "batch_job" and response.json()["parent"] == 1
    missing = c.call("POST", f"{D}/support-chat/versions/from-batch-job", {"batch_job": 999})
    assert missing.status_code == 404
