from django.core.files.uploadedfile import SimpleUploadedFile
from django.test import Client

from apps.finetune.models import Dataset, DatasetVersion
from tests.factories import PASSWORD, UserFactory
from tests.finetune.conftest import chat, jsonl, make_dataset, upload

V = "/squads/acme/datasets"


def client_for(name: str) -> Client:
    client = Client()
    assert client.login(username=UserFactory(username=name).username, password=PASSWORD)
    return client


def test_list_and_create(squad):
    engineer = client_for("engineer")
    page = engineer.get(f"{V}/")
    assert page.status_code == 200 and b"New dataset" in page.content
    response = engineer.post(
        f"{V}/", {"name": "Support chat", "slug": "support-chat", "format": "chat"}
    )
    assert response.status_code == 302 and response["Location"] == f"{V}/support-chat/"
    assert Dataset.objects.get().created_by.username == "engineer"
    again = engineer.post(f"{V}/", {"name": "Again", "slug": "support-chat", "format": "chat"})
    assert again.status_code == 409 and b"already exists in squad" in again.content
    viewer = client_for("viewer")
    listed = viewer.get(f"{V}/")
    assert b"support-chat" in listed.content and b"New dataset" not in listed.content
    assert viewer.post(f"{V}/", {"name": "X", "slug": "x", "format": "chat"}).status_code == 403
    assert client_for("outsider").get(f"{V}/").status_code == 404
    assert b"/squads/acme/datasets/" in viewer.get("/squads/acme/").content


def test_upload_errors_inline_then_success(squad):
    make_dataset(squad)
    engineer = client_for("engineer")
    bad = jsonl(chat(), '{"messages": [}', chat(answer=" "))
    response = engineer.post(
        f"{V}/support-chat/",
        {"file": SimpleUploadedFile("rows.jsonl", bad), "commit_message": "try"},
    )
    assert response.status_code == 422
    html = response.content.decode()
    assert '<td class="nowrap">2</td><td>not valid JSON: Expecting value at column 15' in html
    assert '<td class="nowrap">3</td><td>messages[2].content is empty' in html
    assert 'value="try"' in html
    assert not DatasetVersion.objects.exists()
    good = jsonl(*(chat(user=f"q{i}") for i in range(25)))
    response = engineer.post(
        f"{V}/support-chat/",
        {"file": SimpleUploadedFile("rows.jsonl", good), "seed": "5", "eval_fraction": "0.2"},
    )
    assert response.status_code == 302
    version = DatasetVersion.objects.get()
    assert (version.split_seed, version.eval_count) == (5, 5)
    page = engineer.get(f"{V}/support-chat/")
    assert b"Rows of v1" in page.content and b"q19" in page.content and b"q20" not in page.content
    refused = client_for("sme").post(
        f"{V}/support-chat/", {"file": SimpleUploadedFile("rows.jsonl", good)}
    )
    assert refused.status_code == 403


def test_preview_paging_diff_and_download(squad):
    dataset = make_dataset(squad)
    upload(dataset, jsonl(*(chat(user=f"q{i}") for i in range(25))))
    upload(dataset, jsonl(*(chat(user=f"q{i}") for i in range(1, 26))))
    viewer = client_for("viewer")
    partial = viewer.get(f"{V}/support-chat/v1/rows?offset=20", headers={"HX-Request": "true"})
    assert partial.status_code == 200
    html = partial.content.decode()
    assert html.lstrip().startswith('<section class="card" id="preview"')
    assert "q24" in html and "q19" not in html and "offset=0" in html
    diff = viewer.get(f"{V}/support-chat/diff?from=1&to=2", headers={"HX-Request": "true"})
    assert b"<strong>1</strong> added, <strong>1</strong> removed, 24 unchanged" in diff.content
    assert b"q25" in diff.content
    assert viewer.get(f"{V}/support-chat/diff?from=1&to=9").status_code == 404
    download = viewer.get(f"{V}/support-chat/v2.jsonl")
    assert download.status_code == 200
    assert b"".join(download.streaming_content).count(b"\n") == 25
    assert client_for("outsider").get(f"{V}/support-chat/v2.jsonl").status_code == 404


def test_review_queue_dashboard_turns_an_export_into_a_dataset_version(squad):
    from apps.reviews.models import ReviewItem
    from apps.reviews.services import queues
    from tests.finetune.test_services import _approved_export

    export, _, external = _approved_export(squad)
    dataset = make_dataset(squad)
    make_dataset(squad, slug="pc", format="prompt_completion")
    queue = export.queue
    dashboard = f"/squads/acme/review-queues/{queue.slug}/"
    engineer = client_for("engineer")
    page = engineer.get(dashboard).content.decode()
    assert "Create dataset version" in page
    assert 'value="support-chat"' in page and 'value="pc"' not in page  # chat/variables only
    # SMEs see the dashboard but may neither export nor add dataset versions.
    assert "Create dataset version" not in client_for("sme").get(dashboard).content.decode()
    form = {"queue": queue.slug, "export": str(export.pk), "dataset": dataset.slug}
    # The external item has no rendered messages: refused inline with its line, nothing stored.
    refused = engineer.post(f"{V}/from-review-export", form)
    assert refused.status_code == 422 and f"item {external.pk} has no rendered" in (
        refused.content.decode()
    )
    assert not DatasetVersion.objects.exists()
    ReviewItem.objects.filter(pk=external.pk).delete()
    export = queues.review_export(actor=UserFactory(username="engineer"), queue=queue)
    form["export"] = str(export.pk)
    response = engineer.post(f"{V}/from-review-export", form)
    assert response.status_code == 302 and response["Location"] == f"{V}/{dataset.slug}/"
    version = DatasetVersion.objects.get(dataset=dataset)
    assert version.source == "review_export" and version.source_ref["export"] == export.pk
    wrong_format = engineer.post(f"{V}/from-review-export", {**form, "dataset": "pc"})
    assert wrong_format.status_code in (409, 422) and b"chat or variables" in (wrong_format.content)
    assert not DatasetVersion.objects.filter(dataset__slug="pc").exists()
    assert client_for("sme").post(f"{V}/from-review-export", form).status_code == 403
    assert client_for("outsider").post(f"{V}/from-review-export", form).status_code == 404
