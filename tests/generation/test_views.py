import csv
import io
import json
from decimal import Decimal

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from django.test import Client
from django.utils import timezone

from apps.generation.models import BatchJob, Generation, ModelTarget
from tests.factories import PASSWORD, UserFactory
from tests.prompts.factories import make_prompt

pytestmark = pytest.mark.django_db

HTMX = {"HX-Request": "true"}
RUN_URL = "/squads/acme/prompts/support/run"
GOOD = {"customer": {"name": "Ada", "tier": "pro"}, "question": "Where is my order?"}


@pytest.fixture(autouse=True)
def data_dir(settings, tmp_path):
    """Uploaded rows land here, not in a directory shared with other runs."""
    settings.DATA_DIR = tmp_path
    return tmp_path


@pytest.fixture
def template(squad):
    return make_prompt(squad, UserFactory(username="engineer"))


def _client(username: str) -> Client:
    client = Client()
    assert client.login(username=username, password=PASSWORD)
    return client


def _local() -> ModelTarget:
    return ModelTarget.objects.get(name="local", squad__isnull=True)


def _generation(template, **fields) -> Generation:
    base = {
        "squad": template.squad,
        "prompt_version": template.latest_version,
        "target": _local(),
        "variables": GOOD,
        "source": Generation.Source.PLAYGROUND,
    }
    return Generation.objects.create(**{**base, **fields})


def _job(template, *, rows: int, done: int = 0, **fields) -> BatchJob:
    base = {
        "squad": template.squad,
        "prompt_version": template.latest_version,
        "target": _local(),
        "created_by": UserFactory(username="engineer"),
        "source_name": "rows.jsonl",
        "rows_path": "/nowhere/rows.jsonl",
        "rows_sha256": "0" * 64,
        "rows_total": rows,
        "rows_done": done,
    }
    return BatchJob.objects.create(**{**base, **fields})


def _results(job: BatchJob, statuses: list[str]) -> None:
    """One finished generation per row, with the given statuses in row order."""
    Generation.objects.bulk_create(
        Generation(
            squad=job.squad,
            prompt_version=job.prompt_version,
            target=job.target,
            target_used="local",
            variables={"customer": {"name": f"n{i}"}, "question": f"q{i}"},
            output_text=f"answer {i}",
            status=status,
            errors=[] if status == "ok" else [{"path": "$.label", "message": f"bad {i}"}],
            source=Generation.Source.BATCH,
            batch_job=job,
            row_index=i,
            output_tokens=3,
            finished_at=timezone.now(),
        )
        for i, status in enumerate(statuses)
    )


def _upload(name: str, text: str) -> SimpleUploadedFile:
    return SimpleUploadedFile(name, text.encode(), content_type="application/octet-stream")


def _jsonl(*rows) -> str:
    return "".join(json.dumps(r) + "\n" for r in rows)


def _stored_files(data_dir) -> list:
    return list((data_dir / "batches").rglob("*")) if (data_dir / "batches").exists() else []


# --- playground -----------------------------------------------------------------------


def test_template_page_loads_the_run_panel(template):
    page = _client("viewer").get("/squads/acme/prompts/support/")
    assert page.status_code == 200
    assert f'hx-get="{RUN_URL}" hx-trigger="load"'.encode() in page.content


def test_run_panel_for_engineer_defaults_to_the_latest_version_and_its_target(template):
    response = _client("engineer").get(RUN_URL, headers=HTMX)
    assert response.status_code == 200
    html = response.content.decode()
    assert html.lstrip().startswith('<section class="card run-panel" id="run-panel"')
    assert '<option value="1" selected>v1 (latest)</option>' in html
    assert '<option value="local" selected>local (local, global) — the version' in html
    # Pre-filled like the editor: a value shaped by the input schema.
    assert "&quot;question&quot;: &quot;example&quot;" in html
    assert 'hx-post="/squads/acme/prompts/support/run"' in html


def test_choosing_another_version_keeps_the_variables_and_takes_its_target(template):
    from apps.prompts import services as prompts
    from tests.prompts.factories import content

    prompts.prompt_version_create(
        actor=UserFactory(username="engineer"),
        template=template,
        **content(commit_message="bigger", model={"target": "big-gpu"}),
    )
    response = _client("engineer").get(
        RUN_URL, {"version": "2", "variables": '{"mine": 1}'}, headers=HTMX
    )
    html = response.content.decode()
    assert '<option value="2" selected>v2 (latest)</option>' in html
    assert "{&quot;mine&quot;: 1}</textarea>" in html
    assert "big-gpu — the version's target (not available)" in html
    assert '<option value="local">local (local, global)</option>' in html


@pytest.mark.parametrize("username", ["viewer", "sme", "compliance"])
def test_run_panel_is_hidden_from_members_who_cannot_run(template, username):
    client = _client(username)
    embedded = client.get(RUN_URL, headers=HTMX)
    assert embedded.status_code == 200 and embedded.content == b""
    assert client.get(RUN_URL).status_code == 403


def test_run_queues_a_generation_and_returns_a_polling_result(
    template, django_capture_on_commit_callbacks
):
    with django_capture_on_commit_callbacks(execute=False) as callbacks:
        response = _client("engineer").post(
            RUN_URL,
            {"version": "1", "target": "local", "variables": json.dumps(GOOD)},
            headers=HTMX,
        )
    assert response.status_code == 200
    assert len(callbacks) == 1  # run_generation.delay, at commit; no worker here
    generation = Generation.objects.get()
    assert generation.status == "queued" and generation.source == "playground"
    assert generation.variables == GOOD and generation.requested_by.username == "engineer"
    html = response.content.decode()
    poll = f'hx-get="/squads/acme/generations/{generation.pk}" hx-trigger="every 1s"'
    assert poll in html and 'id="run-result" aria-live="polite"' in html
    assert "Where is my order?" in html  # the typed variables stay in the form


def test_run_with_bad_variables_shows_every_error_inline(
    template, django_capture_on_commit_callbacks
):
    bad = {"customer": {"name": ""}, "items": ["x"]}
    with django_capture_on_commit_callbacks(execute=False) as callbacks:
        response = _client("engineer").post(
            RUN_URL, {"version": "1", "variables": json.dumps(bad)}, headers=HTMX
        )
    assert response.status_code == 422 and callbacks == []
    assert Generation.objects.count() == 0
    html = response.content.decode()
    assert 'role="alert" id="run-error"' in html and 'aria-invalid="true"' in html
    for path in ("<code>$</code>", "<code>$.customer.name</code>", "<code>$.items[0]</code>"):
        assert path in html
    assert "&#x27;question&#x27; is a required property" in html


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('{"customer": ', "Variables is not valid JSON: Expecting value at line 1, column 14."),
        ("[1, 2]", "Variables must be a JSON object"),
        ("[" * 5000 + "]" * 5000, "Variables is nested more than 64 levels deep."),  # was a 500
        (
            '{"text": ' + "9" * 5000 + "}",  # json.loads raises a plain ValueError: was a 500
            "Variables is not usable JSON: a number has more than 4,300 digits "
            "(at line 1, column 10).",
        ),
    ],
)
def test_run_with_unparseable_variables_is_an_inline_error(template, text, message):
    response = _client("engineer").post(RUN_URL, {"variables": text}, headers=HTMX)
    assert response.status_code == 422
    assert message in response.content.decode()
    assert Generation.objects.count() == 0


@pytest.mark.parametrize(
    "text", ["[" * 1500 + "]" * 1500, "[" * 5000 + "]" * 5000, '{"n": ' + "9" * 5000 + "}"]
)
def test_the_run_panel_opens_with_unparseable_variables_in_the_query(template, text):
    # The panel re-fills its form from ?variables=; RecursionError there was a 500.
    response = _client("engineer").get(RUN_URL, {"variables": text})
    assert response.status_code == 200
    assert Generation.objects.count() == 0


def test_batch_upload_through_the_api_names_the_row_with_a_huge_number(template, api_as):
    rows = _jsonl(GOOD) + '{"question": "q", "words": ' + "9" * 5000 + "}\n"
    upload = SimpleUploadedFile("rows.jsonl", rows.encode())
    api = api_as("engineer")
    response = api.client.post(
        "/api/v1/squads/acme/prompts/support/batches", {"file": upload}, headers=api.headers
    )
    assert response.status_code == 422
    [error] = response.json()["errors"]
    assert error["row"] == 2 and "a number has more than 4,300 digits" in error["message"]
    assert BatchJob.objects.count() == 0


def test_run_on_an_unknown_target_or_version_is_an_inline_error(template):
    client = _client("engineer")
    response = client.post(RUN_URL, {"target": "nope", "variables": json.dumps(GOOD)}, headers=HTMX)
    assert response.status_code == 404
    assert b"No enabled model target named &#x27;nope&#x27;" in response.content
    assert b'id="run-target" name="target" aria-invalid="true"' in response.content
    response = client.post(RUN_URL, {"version": "9", "variables": json.dumps(GOOD)}, headers=HTMX)
    assert response.status_code == 404 and b"has no version 9" in response.content
    assert Generation.objects.count() == 0


def test_run_by_a_viewer_is_forbidden(template):
    response = _client("viewer").post(RUN_URL, {"variables": json.dumps(GOOD)}, headers=HTMX)
    assert response.status_code == 403
    assert Generation.objects.count() == 0


def test_generation_partial_polls_until_finished(template):
    generation = _generation(template)
    url = f"/squads/acme/generations/{generation.pk}"
    client = _client("viewer")
    queued = client.get(url, headers=HTMX).content.decode()
    assert queued.lstrip().startswith("<article")
    assert f'hx-get="{url}" hx-trigger="every 1s"' in queued and "Queued" in queued

    generation.status = Generation.Status.INVALID
    generation.target_used = "backup"
    generation.output_text = 'Sure! {"label": "maybe"}'
    generation.output_json = None
    generation.errors = [{"path": "$.label", "message": "'maybe' is not one of ['spam']"}]
    generation.attempts = [
        {"target": "local", "kind": "first", "finish_reason": "stop", "errors": []},
        {"target": "backup", "kind": "fallback", "error": "connection refused"},
    ]
    generation.input_tokens, generation.output_tokens = 12, 7
    generation.latency_ms, generation.cost = 345, Decimal("0.0123")
    generation.finished_at = timezone.now()
    generation.save()
    done = client.get(url, headers=HTMX).content.decode()
    assert "hx-trigger" not in done and "aria-busy" not in done
    assert '<span class="badge status-invalid">invalid</span>' in done
    assert "<code>$.label</code>" in done and "Sure! {&quot;label&quot;: &quot;maybe&quot;}" in done
    assert "12 in · 7 out" in done and "345 ms" in done and "0.012300" in done
    assert '<code>backup</code> <span class="badge">fallback from local</span>' in done
    assert "connection refused" in done and "finish: stop" in done

    generation.status, generation.output_json = Generation.Status.OK, {"label": "spam"}
    generation.save()
    ok = client.get(url, headers=HTMX).content.decode()
    assert "{\n  &quot;label&quot;: &quot;spam&quot;\n}" in ok  # pretty JSON
    page = client.get(url)
    assert page.status_code == 200 and b"<html" in page.content


# --- batch upload -----------------------------------------------------------------------


def test_batch_list_shows_jobs_and_the_form_to_those_who_may_run(template):
    job = _job(template, rows=10, done=4, status=BatchJob.Status.RUNNING)
    html = _client("engineer").get("/squads/acme/batches/?prompt=support").content.decode()
    assert f'href="/squads/acme/batches/{job.pk}/">Batch {job.pk}</a>' in html
    assert '<progress max="10" value="4"' in html and "4 / 10" in html
    assert '<span class="badge status-running">running</span>' in html
    assert 'enctype="multipart/form-data"' in html
    assert '<option value="support" selected>' in html
    viewer = _client("viewer").get("/squads/acme/batches/").content.decode()
    assert f"Batch {job.pk}" in viewer and 'enctype="multipart/form-data"' not in viewer
    assert b'href="/squads/acme/batches/"' in _client("viewer").get("/squads/acme/").content


def test_refused_upload_lists_row_errors_and_stores_nothing(
    template, data_dir, django_capture_on_commit_callbacks
):
    rows = _jsonl(GOOD, {"customer": {"name": "Bo"}}, GOOD) + '{"customer": oops}\n'
    with django_capture_on_commit_callbacks(execute=False) as callbacks:
        response = _client("engineer").post(
            "/squads/acme/batches/",
            {"prompt": "support", "batch_size": "4", "file": _upload("rows.jsonl", rows)},
        )
    assert response.status_code == 422 and callbacks == []
    assert BatchJob.objects.count() == 0 and _stored_files(data_dir) == []
    html = response.content.decode()
    assert "nothing was stored" in html.lower() and "<caption>Refused rows</caption>" in html
    assert '<td class="nowrap">4</td>' in html and "not valid JSON" in html
    assert '<option value="support" selected>' in html and 'value="4"' in html  # form kept


def test_refused_csv_upload_names_file_lines_and_paths(template, data_dir):
    text = 'customer,question\n{"name": "Ada"},fine\n{"name": ""},also fine\n'
    response = _client("engineer").post(
        "/squads/acme/batches/", {"prompt": "support", "file": _upload("rows.csv", text)}
    )
    assert response.status_code == 422
    html = response.content.decode()
    assert '<td class="nowrap">3</td><td><code>$.customer.name</code></td>' in html
    assert BatchJob.objects.count() == 0 and _stored_files(data_dir) == []


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"prompt": ""}, "Choose the prompt to run."),
        ({"prompt": "support", "batch_size": "many"}, "Batch size must be a whole number"),
        ({"prompt": "support"}, "Choose a .jsonl or .csv file of variables."),
        ({"prompt": "support", "version": "staging"}, "has no label &#x27;staging&#x27;"),
    ],
)
def test_upload_form_errors_are_inline(template, data, message):
    response = _client("engineer").post("/squads/acme/batches/", data)
    assert response.status_code in (404, 422)
    assert message in response.content.decode() and 'id="batch-error"' in response.content.decode()
    assert BatchJob.objects.count() == 0


def test_good_upload_creates_the_job_and_redirects(
    template, data_dir, django_capture_on_commit_callbacks
):
    with django_capture_on_commit_callbacks(execute=False) as callbacks:
        response = _client("engineer").post(
            "/squads/acme/batches/",
            {
                "prompt": "support",
                "version": "1",
                "target": "local",
                "batch_size": "2",
                "file": _upload("rows.jsonl", _jsonl(GOOD, GOOD, GOOD)),
            },
        )
    job = BatchJob.objects.get()
    assert response.status_code == 302 and response["Location"] == f"/squads/acme/batches/{job.pk}/"
    assert len(callbacks) == 1  # run_batch_job.delay, at commit
    assert (job.rows_total, job.batch_size, job.status) == (3, 2, "queued")
    assert (data_dir / "batches" / str(job.pk) / "rows.jsonl").exists()


def test_viewer_cannot_upload(template):
    response = _client("viewer").post(
        "/squads/acme/batches/",
        {"prompt": "support", "file": _upload("rows.jsonl", _jsonl(GOOD))},
    )
    assert response.status_code == 403 and BatchJob.objects.count() == 0


# --- job page ---------------------------------------------------------------------------


def test_job_page_shows_progress_and_polls_while_running(template):
    job = _job(
        template,
        rows=8,
        done=6,
        status=BatchJob.Status.RUNNING,
        output_tokens=300,
        generation_seconds=12.0,
        started_at=timezone.now() - timezone.timedelta(seconds=60),
    )
    _results(job, ["ok", "ok", "invalid", "failed", "ok", "blocked"])
    url = f"/squads/acme/batches/{job.pk}/"
    client = _client("engineer")
    html = client.get(url).content.decode()
    assert '<progress max="8" value="6" aria-label="Rows done"' in html
    assert "6 / 8 (75%)" in html and "<dd>25.0</dd>" in html  # tokens/s
    assert "<dt>ETA</dt><dd>20 s</dd>" in html
    assert f'hx-get="{url}" hx-trigger="every 2s"' in html
    assert 'hx-confirm="Cancel batch' in html
    assert html.count('<tr id="row-') == 6
    assert '<span class="count">3</span>' in html  # ok

    progress = client.get(url, headers={**HTMX, "HX-Target": "progress"})
    assert progress.content.decode().lstrip().startswith('<section class="card gen-progress"')
    assert "HX-Trigger" not in progress and b'id="results"' not in progress.content
    assert b"Cancel batch" not in _client("viewer").get(url).content


def test_finished_job_stops_polling_and_refreshes_results_once(template):
    job = _job(template, rows=2, done=2, status=BatchJob.Status.SUCCEEDED)
    _results(job, ["ok", "ok"])
    url = f"/squads/acme/batches/{job.pk}/"
    client = _client("viewer")
    progress = client.get(url, headers={**HTMX, "HX-Target": "progress"})
    assert b"hx-trigger" not in progress.content and b"Cancel batch" not in progress.content
    assert progress["HX-Trigger"] == '{"batch-finished": {}}'
    html = client.get(url).content.decode()
    assert 'hx-trigger="every 2s"' not in html
    assert 'hx-trigger="batch-finished from:body"' in html


def test_results_filter_by_status_and_page(template):
    job = _job(template, rows=120, done=120, status=BatchJob.Status.SUCCEEDED)
    _results(job, ["ok" if i % 3 else "invalid" for i in range(120)])
    url = f"/squads/acme/batches/{job.pk}/"
    client = _client("viewer")

    invalid = client.get(url, {"status": "invalid"}, headers={**HTMX, "HX-Target": "results"})
    html = invalid.content.decode()
    assert html.lstrip().startswith('<section class="card" id="results"')
    assert html.count('<tr id="row-') == 40
    assert '<span class="badge status-ok">' not in html
    assert "<caption" in html and 'aria-current="page">invalid' in html
    assert f"/squads/acme/batches/{job.pk}/results.csv?status=invalid" in html

    third = client.get(url, {"page": "3"}).content.decode()
    assert third.count('<tr id="row-') == 20 and "Page 3 of 3" in third
    assert '<tr id="row-100">' in third and '<tr id="row-99">' not in third
    assert '<th scope="row" class="nowrap">120</th>' in third  # rows count from 1

    assert client.get(url, {"status": "weird"}).status_code == 422


def test_long_outputs_are_truncated_with_the_full_text_on_demand(template):
    job = _job(template, rows=1, done=1, status=BatchJob.Status.SUCCEEDED)
    _results(job, ["ok"])
    Generation.objects.filter(batch_job=job).update(output_text="word " * 100)
    html = _client("viewer").get(f"/squads/acme/batches/{job.pk}/").content.decode()
    assert "<details><summary>word word" in html and ("word " * 100).strip() in html


def test_job_page_query_count_is_fixed(template, django_assert_max_num_queries):
    job = _job(template, rows=200, done=60, status=BatchJob.Status.RUNNING)
    _results(job, ["ok"] * 55 + ["invalid"] * 5)
    url = f"/squads/acme/batches/{job.pk}/"
    client = _client("engineer")
    client.get(url)  # warms the permission cache
    with django_assert_max_num_queries(10) as ctx:
        client.get(url)
    Generation.objects.filter(batch_job=job).delete()
    _results(job, ["ok", "failed", "blocked", "invalid"] * 40)
    with django_assert_max_num_queries(len(ctx.captured_queries)):
        response = client.get(url)
    assert response.content.count(b'<tr id="row-') == 50


# --- cancel ---------------------------------------------------------------------------


def test_cancel_a_queued_job(template):
    job = _job(template, rows=5)
    url = f"/squads/acme/batches/{job.pk}/cancel"
    assert _client("viewer").post(url, headers=HTMX).status_code == 403
    response = _client("engineer").post(url, headers=HTMX)
    assert response.status_code == 200
    job.refresh_from_db()
    assert job.status == "cancelled" and job.cancel_requested
    html = response.content.decode()
    assert '<span class="badge status-cancelled">cancelled</span>' in html
    assert "hx-trigger" not in html and response["HX-Trigger"] == '{"batch-finished": {}}'

    again = _client("engineer").post(url, headers=HTMX)
    assert again.status_code == 409 and b"already cancelled" in again.content


def test_cancel_a_running_job_asks_the_worker_to_stop(template):
    job = _job(template, rows=5, done=2, status=BatchJob.Status.RUNNING)
    response = _client("owner").post(f"/squads/acme/batches/{job.pk}/cancel")
    assert response.status_code == 302 and response["Location"] == f"/squads/acme/batches/{job.pk}/"
    job.refresh_from_db()
    assert job.status == "running" and job.cancel_requested
    html = _client("owner").get(f"/squads/acme/batches/{job.pk}/").content.decode()
    assert "Cancel requested" in html and 'hx-confirm="Cancel batch' not in html


# --- export ---------------------------------------------------------------------------


def test_export_jsonl_and_csv(template):
    job = _job(template, rows=3, done=3, status=BatchJob.Status.SUCCEEDED)
    _results(job, ["ok", "invalid", "ok"])
    client = _client("viewer")
    base = f"/squads/acme/batches/{job.pk}/results"

    jsonl = client.get(f"{base}.jsonl")
    assert jsonl["Content-Disposition"] == f'attachment; filename="batch-{job.pk}.jsonl"'
    lines = [json.loads(line) for line in b"".join(jsonl.streaming_content).splitlines()]
    assert [(r["row_index"], r["status"]) for r in lines] == [(0, "ok"), (1, "invalid"), (2, "ok")]
    assert lines[1]["errors"] == [{"path": "$.label", "message": "bad 1"}]

    response = client.get(f"{base}.csv", {"status": "ok"})
    assert response["Content-Type"].startswith("text/csv")
    records = list(csv.DictReader(io.StringIO(b"".join(response.streaming_content).decode())))
    assert [r["row_index"] for r in records] == ["0", "2"]
    assert json.loads(records[1]["variables"]) == {"customer": {"name": "n2"}, "question": "q2"}
    assert records[0]["output_text"] == "answer 0"


# --- access -----------------------------------------------------------------------------


def test_outsiders_get_404_everywhere(template):
    generation = _generation(template)
    job = _job(template, rows=1)
    client = _client("outsider")
    for url in (
        RUN_URL,
        f"/squads/acme/generations/{generation.pk}",
        "/squads/acme/batches/",
        f"/squads/acme/batches/{job.pk}/",
        f"/squads/acme/batches/{job.pk}/results.csv",
    ):
        assert client.get(url).status_code == 404, url
    assert client.post(RUN_URL, {"variables": "{}"}).status_code == 404
    assert client.post(f"/squads/acme/batches/{job.pk}/cancel").status_code == 404
    assert Generation.objects.count() == 1 and BatchJob.objects.get().status == "queued"


def test_other_squads_generations_and_jobs_are_not_found(template):
    from tests.factories import make_squad

    make_squad(slug="other", members={"engineer": ["prompt_engineer"]})
    generation = _generation(template)
    job = _job(template, rows=1)
    client = _client("engineer")
    assert client.get(f"/squads/other/generations/{generation.pk}").status_code == 404
    assert client.get(f"/squads/other/batches/{job.pk}/").status_code == 404
