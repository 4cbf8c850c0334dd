"""Counts and numbering people read (issue 16, defect 7): refused files count rows, not
problems, without repeating them in the heading; messages are numbered from 1 in errors,
the editor and the evidence pack; the dataset preview's "1–4 of 4"; a zero cost reads as
a number; the audit data column is JSON."""

import json
from decimal import Decimal

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from django.test import Client

from apps.audit.services import audit_log
from apps.core.exceptions import ValidationFailed
from apps.prompts.contracts import RenderFailed, render_messages, where_label
from apps.squads.models import Squad
from tests.factories import PASSWORD, UserFactory
from tests.prompts.factories import make_prompt

pytestmark = pytest.mark.django_db


@pytest.fixture(autouse=True)
def data_dir(settings, tmp_path):
    settings.DATA_DIR = tmp_path
    return tmp_path


def _client(username: str) -> Client:
    client = Client()
    assert client.login(username=username, password=PASSWORD)
    return client


def test_a_bad_batch_file_counts_rows_not_problems(squad):
    make_prompt(squad, UserFactory(username="engineer"))
    # 30 rows, each with three problems (customer is not an object, the question is
    # missing, too many items): 90 problems in 30 rows.
    row = {"customer": "Ada", "items": [1, 2, 3, 4, 5, 6]}
    content = "".join(json.dumps(row) + "\n" for _ in range(30))
    response = _client("engineer").post(
        "/squads/acme/batches/",
        {
            "prompt": "support",
            "batch_size": "4",
            "file": SimpleUploadedFile("rows.jsonl", content.encode()),
        },
    )
    html = response.content.decode()
    assert response.status_code == 422
    assert '<p class="error">30 of 30 rows refused (90 problems) — nothing was stored.</p>' in html
    # The problems are in the table only, not repeated in the heading.
    assert html.count("is a required property") == 30


def test_message_numbers_are_counted_from_one():
    assert where_label("messages[1].content") == "Message 2"
    assert where_label("messages[0].role") == "Message 1, role"
    assert where_label("messages[3]") == "Message 4"
    assert where_label("$.customer.name") == "$.customer.name"
    with pytest.raises(RenderFailed) as exc:
        render_messages(
            [{"role": "system", "content": "ok"}, {"role": "user", "content": "{{ 1 / n }}"}],
            {"type": "object"},
            {"n": 0},
        )
    assert exc.value.message.startswith("Message 2 could not be rendered")
    assert exc.value.field == "messages[1].content"


def test_dataset_preview_counts_its_rows(squad):
    from apps.finetune import services as finetune

    owner = UserFactory(username="owner")
    dataset = finetune.dataset_create(
        actor=owner, squad=squad, slug="faq", name="FAQ", format="prompt_completion"
    )
    rows = "".join(json.dumps({"prompt": f"q{i}", "completion": "a"}) + "\n" for i in range(4))
    finetune.dataset_version_upload(
        actor=owner, dataset=dataset, content=rows.encode(), filename="r.jsonl"
    )
    page = _client("viewer").get("/squads/acme/datasets/faq/").content.decode()
    assert 'Rows of v1 <span class="muted small">1–4 of 4</span>' in page


def test_audit_data_column_is_json(squad):
    from django.db import transaction

    with transaction.atomic():
        audit_log(
            actor=UserFactory(username="owner"),
            action="squad.flag_set",
            squad=Squad.objects.get(slug="acme"),
            data={"enabled": True, "note": None},
        )
    page = _client("owner").get("/audit/acme/")
    if page.status_code == 403:  # who may read the squad's audit page is decided elsewhere
        page = _client("compliance").get("/audit/acme/")
    html = page.content.decode()
    assert "{&quot;enabled&quot;: true, &quot;note&quot;: null}" in html
    assert "&#x27;enabled&#x27;: True" not in html


def test_zero_cost_in_the_evidence_pack_is_a_number(squad):
    from apps.evidence.collect import COST_PLACES

    assert format(Decimal("0").quantize(COST_PLACES), "f") == "0.00000000"
    template = make_prompt(squad, UserFactory(username="engineer"))
    import io
    import zipfile

    from apps.evidence import services as evidence

    _, content = evidence.evidence_pack_build(
        actor=UserFactory(username="compliance"), version=template.latest_version
    )
    doc = json.loads(zipfile.ZipFile(io.BytesIO(content)).read("evidence.json"))
    assert doc["generations"]["cost"] == "0.00000000"
    html = zipfile.ZipFile(io.BytesIO(content)).read("evidence.html").decode()
    assert "0E-8" not in html


def test_errors_name_messages_like_the_editor(squad):
    from apps.reviews.services import approvals

    version = make_prompt(squad, UserFactory(username="engineer")).latest_version
    with pytest.raises(ValidationFailed) as exc:
        approvals.comment_add(
            actor=UserFactory(username="sme"), version=version, body="x", message_index=1, line=9
        )
    assert exc.value.message.startswith("Message 2 of version 1 has 1 line")
    with pytest.raises(ValidationFailed) as exc:
        approvals.comment_add(
            actor=UserFactory(username="sme"), version=version, body="x", message_index=5
        )
    assert "there is no message 6" in exc.value.message
