import hashlib
import json
from pathlib import Path

import pytest

from apps.audit.models import AuditEvent
from apps.core.exceptions import Conflict, NotFound, PermissionDenied, ValidationFailed
from apps.finetune import selectors, services
from apps.finetune.models import DatasetVersion
from apps.finetune.rows import RowsRefused
from apps.generation.models import BatchJob, Generation
from apps.reviews.models import ReviewItem
from apps.reviews.services import queues
from tests.factories import UserFactory
from tests.finetune.conftest import chat, jsonl, make_dataset, upload
from tests.reviews import queue_factories as f


def user(name: str):
    return UserFactory(username=name)


def rows(n: int, prefix: str = "q") -> bytes:
    return jsonl(*(chat(user=f"{prefix} {i}", answer=f"answer {i}") for i in range(n)))


def test_dataset_create_rules(squad):
    dataset = make_dataset(squad)
    assert dataset.format == "chat" and dataset.latest_version is None
    event = AuditEvent.objects.order_by("-sequence").first()
    assert event.action == "dataset.created" and event.data["slug"] == "support-chat"
    with pytest.raises(Conflict, match="already exists in squad 'acme'"):
        make_dataset(squad)
    with pytest.raises(ValidationFailed, match="needs the prompt version"):
        make_dataset(squad, slug="vars", format="variables")
    with pytest.raises(ValidationFailed, match="Unknown format 'tsv'"):
        make_dataset(squad, slug="other", format="tsv")
    for name in ("sme", "compliance", "viewer"):
        with pytest.raises(PermissionDenied, match="create datasets and dataset versions"):
            services.dataset_create(
                actor=user(name), squad=squad, slug="x", name="X", format="chat"
            )
    with pytest.raises(NotFound):
        services.dataset_create(
            actor=user("outsider"), squad=squad, slug="x", name="X", format="chat"
        )


def test_version_stores_rows_hash_counts_and_token_stats(squad, tmp_path):
    dataset = make_dataset(squad)
    version = upload(dataset, rows(20), commit_message="first twenty", seed=7, eval_fraction=0.25)
    path = Path(version.path)
    assert path == tmp_path / "datasets" / str(squad.pk) / str(dataset.pk) / "v1.jsonl"
    data = path.read_bytes()
    assert version.sha256 == hashlib.sha256(data).hexdigest()
    assert version.row_count == 20 and (version.train_count, version.eval_count) == (15, 5)
    stored = [json.loads(line) for line in data.splitlines()]
    assert sum(r["split"] == "eval" for r in stored) == 5
    assert stored[0]["messages"][1]["content"] == "q 0"
    stats = version.token_stats
    assert stats["counter"] == "approx:ceil(chars/4)"
    assert stats["target"] == "local" and stats["context_length"] == 8192
    # "system: Be brief.\nuser: q 0\nassistant: answer 0" = 47 chars -> 12 tokens
    assert stats["min"] == 12 and stats["max"] == 13 and stats["total"] == 12 * 10 + 13 * 10
    assert stats["mean"] == 12.5 and stats["p95"] == 13
    assert version.source == "upload" and version.source_ref["filename"] == "rows.jsonl"
    assert version.parent is None and version.number == 1
    dataset.refresh_from_db()
    assert dataset.latest_version == version
    event = AuditEvent.objects.order_by("-sequence").first()
    assert event.action == "dataset.version_created"
    assert event.data["sha256"] == version.sha256 and event.data["rows"] == 20

    second = upload(dataset, rows(21))
    assert second.number == 2 and second.parent == version
    with pytest.raises(Conflict, match="identical to v2"):
        upload(dataset, rows(21))
    assert DatasetVersion.objects.count() == 2


def test_split_is_reproducible_and_follows_the_fraction(squad):
    first = make_dataset(squad, slug="a")
    second = make_dataset(squad, slug="b")
    v1 = upload(first, rows(200), seed=3, eval_fraction=0.1)
    v2 = upload(second, rows(200), seed=3, eval_fraction=0.1)
    assert v1.sha256 == v2.sha256 and v1.eval_count == 20
    other = upload(second, rows(200), seed=4, eval_fraction=0.1)
    assert other.sha256 != v2.sha256 and other.eval_count == 20
    none = upload(second, rows(200), seed=4, eval_fraction=0)
    assert none.eval_count == 0 and none.train_count == 200
    with pytest.raises(ValidationFailed, match=r"eval_fraction must be 0 to 0\.5"):
        upload(second, rows(3), eval_fraction=0.9)
    single = make_dataset(squad, slug="single")
    assert upload(single, rows(1), eval_fraction=0.5).eval_count == 0


def test_a_failed_transaction_removes_the_file(squad, tmp_path, monkeypatch):
    dataset = make_dataset(squad)

    def broken(**kwargs):
        raise RuntimeError("audit down")

    monkeypatch.setattr(services, "audit_log", broken)
    with pytest.raises(RuntimeError):
        upload(dataset, rows(3))
    assert not DatasetVersion.objects.exists()
    assert not [p for p in tmp_path.rglob("*") if p.is_file()]


def test_context_comes_from_the_local_target(squad):
    from apps.generation.models import ModelTarget

    ModelTarget.objects.create(squad=squad, name="local", kind="local", context_length=256)
    dataset = make_dataset(squad)
    with pytest.raises(RowsRefused) as caught:
        upload(dataset, jsonl(chat(), chat(answer="y" * 2000)))
    assert caught.value.extra == [
        {
            "line": 2,
            "message": "row is 514 tokens (approx:ceil(chars/4)); the model's context is 256",
        }
    ]
    ModelTarget.objects.create(squad=squad, name="tgi", kind="remote", base_url="http://x")
    with pytest.raises(ValidationFailed, match="'tgi' is remote"):
        upload(dataset, jsonl(chat()), target_name="tgi")


def test_preview_pages_and_diff(squad):
    dataset = make_dataset(squad)
    old = upload(dataset, rows(30))
    page = selectors.dataset_rows_page(user=user("viewer"), version=old, offset=25, limit=10)
    assert [r["messages"][1]["content"] for r in page.rows] == [f"q {i}" for i in range(25, 30)]
    assert page.total == 30 and page.next_offset is None and page.previous_offset == 15
    first = selectors.dataset_rows_page(user=user("viewer"), version=old, offset=0, limit=10)
    assert first.next_offset == 10 and first.previous_offset is None
    with pytest.raises(ValidationFailed, match="limit must be 1 to 200"):
        selectors.dataset_rows_page(user=user("viewer"), version=old, limit=500)
    with pytest.raises(NotFound):
        selectors.dataset_rows_page(user=user("outsider"), version=old)

    kept = [chat(user=f"q {i}", answer=f"answer {i}") for i in range(5, 30)]
    new = upload(dataset, jsonl(*kept, chat(user="new 1"), chat(user="new 2")))
    diff = selectors.dataset_version_diff(user=user("viewer"), old=old, new=new)
    assert (diff.added_count, diff.removed_count, diff.unchanged_count) == (2, 5, 25)
    assert [a["row"]["messages"][1]["content"] for a in diff.added] == ["new 1", "new 2"]
    assert [r["index"] for r in diff.removed] == [0, 1, 2, 3, 4]
    assert diff.added[0]["index"] == 25


def _approved_export(squad):
    queue = f.queue(squad, overlap=1, rubric=[])
    generated = f.generation(squad, output="It left the depot today.")
    queues.review_items_add(actor=user("owner"), queue=queue, generations=[generated])
    (item,) = ReviewItem.objects.filter(generation=generated)
    queues.review_annotate(
        actor=user("sme"),
        item=item,
        verdict="approve",
        scores={},
        edited_output="It left the depot yesterday.",
    )
    (external,) = f.external_items(queue, 1)
    queues.review_annotate(actor=user("sme"), item=external, verdict="approve", scores={})
    return queues.review_export(actor=user("engineer"), queue=queue), item, external


def test_version_from_review_export_keeps_lineage(squad):
    export, item, external = _approved_export(squad)
    dataset = make_dataset(squad)
    with pytest.raises(RowsRefused) as caught:
        services.dataset_version_from_review_export(
            actor=user("engineer"), dataset=dataset, export=export
        )
    assert caught.value.extra == [
        {
            "line": 2,
            "message": f"item {external.pk} has no rendered messages (its inputs do not "
            "render with a prompt version)",
        }
    ]
    # an export of only the rendered item
    queue = export.queue
    from apps.reviews.models import ReviewExport

    ReviewItem.objects.filter(pk=external.pk).delete()
    export = queues.review_export(actor=user("engineer"), queue=queue)
    assert isinstance(export, ReviewExport)
    version = services.dataset_version_from_review_export(
        actor=user("engineer"), dataset=dataset, export=export, seed=1
    )
    assert version.source == "review_export" and version.row_count == 1
    assert version.source_ref == {
        "export": export.pk,
        "export_sha256": export.sha256,
        "queue": queue.pk,
        "items": [item.pk],
        "annotators": [user("sme").pk],
    }
    assert version.commit_message == f"From review export {export.pk}"
    (row,) = selectors.dataset_rows_page(user=user("viewer"), version=version).rows
    assert row["messages"][-1] == {"role": "assistant", "content": "It left the depot yesterday."}
    assert row["meta"]["review_export"] == export.pk
    assert row["meta"]["item"] == item.pk and row["meta"]["annotators"] == ["sme"]
    assert row["meta"]["edited"] is True

    variables = make_dataset(
        squad, slug="vars", format="variables", prompt_version=f.version(squad)
    )
    version = services.dataset_version_from_review_export(
        actor=user("owner"), dataset=variables, export=export
    )
    (row,) = selectors.dataset_rows_page(user=user("viewer"), version=version).rows
    assert row["variables"] == f.VARIABLES and row["output"] == "It left the depot yesterday."
    with pytest.raises(PermissionDenied):
        services.dataset_version_from_review_export(
            actor=user("sme"), dataset=dataset, export=export
        )
    pc = make_dataset(squad, slug="pc", format="prompt_completion")
    with pytest.raises(ValidationFailed, match="choose a chat or variables dataset"):
        services.dataset_version_from_review_export(actor=user("owner"), dataset=pc, export=export)


def test_version_from_batch_job_takes_its_ok_generations(squad):
    job = f.batch(squad, [Generation.Status.OK, Generation.Status.FAILED, Generation.Status.OK])
    dataset = make_dataset(squad)
    version = services.dataset_version_from_batch_job(
        actor=user("engineer"), dataset=dataset, job=job, eval_fraction=0
    )
    assert version.source == "batch_job" and version.row_count == 2
    assert version.source_ref["batch_job"] == job.pk and version.source_ref["generations"] == 2
    page = selectors.dataset_rows_page(user=user("viewer"), version=version)
    assert [r["messages"][-1]["content"] for r in page.rows] == ["answer 0", "answer 2"]
    assert page.rows[0]["messages"][0]["content"] == "You help Ada (free)."
    assert [r["meta"]["row_index"] for r in page.rows] == [0, 2]
    assert {r["split"] for r in page.rows} == {"train"}

    BatchJob.objects.filter(pk=job.pk).update(status=BatchJob.Status.RUNNING)
    job.refresh_from_db()
    with pytest.raises(Conflict, match="is running"):
        services.dataset_version_from_batch_job(actor=user("owner"), dataset=dataset, job=job)


def test_admin_is_read_only(squad, admin_client):
    dataset = make_dataset(squad)
    upload(dataset, rows(2))
    assert admin_client.get("/admin/finetune/dataset/").status_code == 200
    assert admin_client.get("/admin/finetune/datasetversion/").status_code == 200
    assert admin_client.get("/admin/finetune/dataset/add/").status_code == 403
