"""HTML views of output review queues: pages, permission refusals, htmx partials, the
annotator, adjudication, export download, the batch and generation "send to queue" forms
and query counts."""

import json

import pytest
from django.test import Client

from apps.reviews.models import Annotation, ReviewExport, ReviewItem, ReviewQueue
from apps.reviews.services import queues as services
from tests.factories import PASSWORD, UserFactory
from tests.reviews import queue_factories as f

pytestmark = pytest.mark.django_db

HTMX = {"HX-Request": "true"}
QS = "/squads/acme/review-queues/"
Q = QS + "support-answers/"


@pytest.fixture(autouse=True)
def data_dir(settings, tmp_path):
    """Exports land here, not in a directory shared with other runs."""
    settings.DATA_DIR = tmp_path
    return tmp_path


@pytest.fixture
def queue(squad) -> ReviewQueue:
    """'Support answers': accuracy 1–5 (required), tone formal/casual, cites_source yes/no;
    overlap 2; owner, engineer, SME and compliance annotate."""
    return f.queue(squad)


def _client(username: str) -> Client:
    client = Client()
    assert client.login(username=username, password=PASSWORD)
    return client


def _annotate(username: str, item: ReviewItem, verdict: str = "approve", **scores) -> Annotation:
    return services.review_annotate(
        actor=UserFactory(username=username),
        item=item,
        verdict=verdict,
        scores=f.scores(**scores),
    )


def _html(response) -> str:
    return response.content.decode()


# --- queue list and form -------------------------------------------------------------------


def test_list_shows_the_squads_queues_and_who_may_create_or_annotate(queue):
    owner = _html(_client("owner").get(QS))
    assert "Support answers" in owner and f'href="{Q}"' in owner
    assert f'href="{QS}new"' in owner
    assert f'href="{Q}annotate"' in owner
    viewer = _html(_client("viewer").get(QS))
    assert "Support answers" in viewer
    assert f'href="{QS}new"' not in viewer and f'href="{Q}annotate"' not in viewer


def test_list_hides_archived_queues_unless_asked(squad, queue):
    services.review_queue_update(actor=UserFactory(username="owner"), queue=queue, archived=True)
    client = _client("sme")
    assert "Support answers" not in _html(client.get(QS))
    page = _html(client.get(QS + "?archived=1"))
    assert "Support answers" in page and "archived" in page
    assert f'href="{Q}annotate"' not in page


def test_squad_page_links_to_the_review_queues(squad):
    assert f'href="{QS}"' in _html(_client("viewer").get("/squads/acme/"))


@pytest.mark.parametrize(("username", "status"), [("outsider", 404), ("viewer", 403), ("sme", 403)])
def test_create_form_is_refused_to_who_cannot_manage_queues(squad, username, status):
    client = _client(username)
    assert client.get(QS + "new").status_code == status
    refused = client.post(QS + "new", {"name": "X", "annotator_roles": ["sme"], "rubric": "rows"})
    assert refused.status_code == status
    assert not ReviewQueue.objects.exists()


def _rubric_post(**overrides) -> dict:
    data = {
        "name": "Tone check",
        "instructions": "Read it aloud.",
        "overlap": "2",
        "annotator_roles": ["sme", "compliance"],
        "rubric": "rows",
        "score_row": ["a1", "b2", "c3"],
        "score_required": ["a1"],
        "score-a1-name": "accuracy",
        "score-a1-kind": "numeric",
        "score-a1-min": "1",
        "score-a1-max": "5",
        "score-a1-label": "Accuracy",
        "score-b2-name": "tone",
        "score-b2-kind": "categorical",
        # min/max typed into a categorical row are not sent: only the kind's settings are.
        "score-b2-min": "3",
        "score-b2-options": "formal\r\ncasual\r\n",
        "score-c3-name": "cites_source",
        "score-c3-kind": "boolean",
    }
    return {**data, **overrides}


def test_create_queue_with_a_rubric_from_rows(squad):
    response = _client("compliance").post(QS + "new", _rubric_post())
    assert response.status_code == 302 and response["Location"] == QS + "tone-check/"
    queue = ReviewQueue.objects.get(slug="tone-check")
    assert queue.overlap == 2 and queue.annotator_roles == ["sme", "compliance"]
    assert queue.instructions == "Read it aloud."
    assert [(s["name"], s["kind"], s["required"]) for s in queue.rubric] == [
        ("accuracy", "numeric", True),
        ("tone", "categorical", False),
        ("cites_source", "boolean", False),
    ]
    assert queue.rubric[0]["label"] == "Accuracy" and queue.rubric[0]["max"] == 5
    assert queue.rubric[1]["options"] == ["formal", "casual"]


def test_rubric_errors_appear_on_their_row_and_setting(squad):
    post = _rubric_post(**{"score-a1-max": "1", "score-b2-options": "formal", "score-c3-name": "X"})
    response = _client("owner").post(QS + "new", post)
    assert response.status_code == 422
    html = _html(response)
    assert "must be greater than min (got min 1, max 1)" in html
    assert 'id="s-a1-max" name="score-a1-max" value="1" aria-invalid="true"' in html
    assert 'id="s-b2-options" name="score-b2-options" rows="3" aria-invalid="true"' in html
    assert 'id="s-c3-name" name="score-c3-name" value="X"' in html
    assert "must be 1–40 lowercase letters" in html
    # What was typed stays, nothing was stored.
    assert 'value="Tone check"' in html and not ReviewQueue.objects.exists()


def test_unparseable_numbers_are_named_by_the_service(squad):
    response = _client("owner").post(QS + "new", _rubric_post(**{"score-a1-min": "one"}))
    assert response.status_code == 422
    assert "must be a number (got &#x27;one&#x27;)" in _html(response)


def test_other_field_errors_are_inline(squad, queue):
    response = _client("owner").post(
        QS + "new", _rubric_post(name="support answers", annotator_roles=["viewer"])
    )
    assert response.status_code == 422
    html = _html(response)
    assert 'id="q-roles-error"' in html and "viewers only read" in html
    conflict = _client("owner").post(QS + "new", _rubric_post(name="Support answers"))
    assert conflict.status_code == 409
    assert 'id="q-name-error"' in _html(conflict) and "already has a review queue" in _html(
        conflict
    )


def test_score_row_partial_adds_and_removes_rows(squad):
    client = _client("owner")
    row = _html(client.get(QS + "score-row", headers=HTMX))
    assert row.lstrip().startswith('<fieldset class="rq-score-row"')
    assert 'name="score_row"' in row
    assert client.get(QS + "score-row?remove=1", headers=HTMX).content == b""


def test_edit_queue_and_rubric_is_fixed_once_annotated(queue):
    client = _client("owner")
    page = _html(client.get(Q + "edit"))
    assert 'value="Support answers"' in page and 'name="score-' in page
    post = _rubric_post(name="Support answers v2", overlap="3", annotator_roles=["sme"])
    assert client.post(Q + "edit", post).status_code == 302
    queue.refresh_from_db()
    assert (queue.name, queue.slug, queue.overlap) == ("Support answers v2", "support-answers", 3)
    assert [s["name"] for s in queue.rubric] == ["accuracy", "tone", "cites_source"]
    item = f.external_items(queue, 1)[0]
    _annotate("sme", item)
    locked = _html(client.get(Q + "edit"))
    assert "the rubric can no longer change" in locked and 'name="score_row"' not in locked
    # Without rows the rubric is left alone; the rest changes.
    fields = {"name": "Support answers", "overlap": "2", "annotator_roles": ["sme"]}
    assert client.post(Q + "edit", {**fields, "archived": "on"}).status_code == 302
    queue.refresh_from_db()
    assert queue.archived_at is not None and len(queue.rubric) == 3
    post = {**_rubric_post(**{"score-a1-max": "7"}), "name": "Support answers"}
    changed = client.post(Q + "edit", post)
    assert changed.status_code == 409 and "create a new queue instead" in _html(changed)


def test_edit_is_refused_to_annotators(queue):
    assert _client("sme").get(Q + "edit").status_code == 403
    assert _client("sme").post(Q + "edit", {"name": "Mine"}).status_code == 403


# --- dashboard -----------------------------------------------------------------------------


@pytest.fixture
def disputed(queue) -> ReviewItem:
    """Three items: the first approved by sme and rejected by compliance (a disagreement),
    the second approved by both, the third untouched."""
    first, second, _ = f.external_items(queue, 3)
    _annotate("sme", first, "approve", accuracy=5)
    _annotate("compliance", first, "reject", accuracy=2, tone="casual")
    _annotate("sme", second, "approve")
    _annotate("compliance", second, "approve")
    return first


def test_dashboard_shows_progress_reviewers_distributions_and_agreement(disputed):
    html = _html(_client("viewer").get(Q))
    assert "Check the facts." in html
    assert "3 · 2 complete · 1 not yet reviewed" in html
    assert "4 of 6 (67 %)" in html
    assert '75 % <span class="muted">(3 approved, 1 rejected)</span>' in html
    assert '<th scope="row">sme</th>' in html and '<th scope="row">compliance</th>' in html
    assert "Krippendorff" in html and "Over the 2 items with two or more annotations" in html
    assert f'id="disagreement-{disputed.pk}"' in html
    # Viewers see, but neither annotate, adjudicate, add items nor export.
    assert f'href="{Q}annotate"' not in html
    assert 'id="adjudicate-' not in html
    assert 'id="add-items"' not in html and 'id="exports"' not in html


def test_dashboard_offers_each_role_its_actions(disputed):
    owner = _html(_client("owner").get(Q))
    assert f'href="{Q}annotate"' in owner and f'href="{Q}edit"' in owner
    assert f'hx-get="{Q}items/{disputed.pk}"' in owner  # adjudicate
    assert 'id="add-items"' in owner and 'id="exports"' in owner
    sme = _html(_client("sme").get(Q))
    assert f'href="{Q}annotate"' in sme and 'id="adjudicate-' not in sme
    engineer = _html(_client("engineer").get(Q))
    assert 'id="exports"' in engineer and 'id="adjudicate-' not in engineer


def test_dashboard_refusals(queue):
    assert _client("outsider").get(Q).status_code == 404
    assert _client("viewer").get(QS + "nope/").status_code == 404


def test_item_list_partial_filters_and_pages(queue, disputed):
    f.bulk_items(queue, 60)
    client = _client("viewer")
    first = client.get(Q, headers={**HTMX, "HX-Target": "queue-items"})
    html = _html(first)
    assert html.lstrip().startswith('<section class="card" id="queue-items"')
    assert html.count('<th scope="row"><a href=') == 50 and "Next 50 →" in html
    last = ReviewItem.objects.filter(queue=queue).order_by("pk")[49].pk
    second = _html(client.get(f"{Q}?after={last}", headers={**HTMX, "HX-Target": "queue-items"}))
    assert second.count('<th scope="row"><a href=') == 13 and "← First page" in second
    only = _html(
        client.get(f"{Q}?state=disagreement", headers={**HTMX, "HX-Target": "queue-items"})
    )
    assert only.count('<th scope="row"><a href=') == 1 and f"items/{disputed.pk}" in only


# --- adjudication --------------------------------------------------------------------------


def test_adjudicator_loads_the_panel_and_settles_the_item(disputed):
    client = _client("compliance")
    panel = _html(client.get(f"{Q}items/{disputed.pk}", headers=HTMX))
    assert panel.lstrip().startswith('<section class="card rq-adjudication"')
    assert '<th scope="row">sme</th>' in panel and '<th scope="row">compliance</th>' in panel
    response = client.post(
        f"{Q}items/{disputed.pk}/adjudicate",
        {"verdict": "approve", "output": "output 0 (checked)\r\n", "note": "Source confirms it."},
        headers=HTMX,
    )
    assert response.status_code == 200
    assert 'Adjudicated: <span class="badge verdict-approve">approve</span>' in _html(response)
    disputed.refresh_from_db()
    assert disputed.adjudicated_verdict == "approve" and not disputed.disagreement
    assert disputed.adjudicated_output == "output 0 (checked)\n"
    assert disputed.adjudication_note == "Source confirms it."


def test_adjudication_keeps_the_original_when_the_output_is_untouched(disputed):
    response = _client("owner").post(
        f"{Q}items/{disputed.pk}/adjudicate", {"verdict": "reject", "output": "output 0"}
    )
    assert response.status_code == 302
    disputed.refresh_from_db()
    assert disputed.adjudicated_verdict == "reject" and disputed.adjudicated_output == ""


def test_adjudication_errors_are_inline_and_refusals_are_403(disputed, queue):
    client = _client("owner")
    bad = client.post(f"{Q}items/{disputed.pk}/adjudicate", {"verdict": "maybe"}, headers=HTMX)
    assert bad.status_code == 422 and "verdict must be approve or reject" in _html(bad)
    lone = f.external_items(queue, 1)[0]
    _annotate("sme", lone)
    early = client.post(f"{Q}items/{lone.pk}/adjudicate", {"verdict": "approve"}, headers=HTMX)
    assert early.status_code == 409 and "at least two" in _html(early)
    for username in ("sme", "engineer", "viewer"):
        refused = _client(username).post(
            f"{Q}items/{disputed.pk}/adjudicate", {"verdict": "approve"}, headers=HTMX
        )
        assert refused.status_code == 403
    disputed.refresh_from_db()
    assert disputed.adjudicated_at is None


def test_item_page_is_blind_for_annotators(disputed):
    sme = _html(_client("sme").get(f"{Q}items/{disputed.pk}"))
    assert '<th scope="row">sme</th>' in sme and '<th scope="row">compliance</th>' not in sme
    assert "you see your own annotation only" in sme
    assert "Settle item" not in sme


# --- export --------------------------------------------------------------------------------


def test_export_creates_a_jsonl_file_offered_for_download(disputed):
    client = _client("engineer")
    response = client.post(Q + "exports", headers=HTMX)
    assert response.status_code == 200
    export = ReviewExport.objects.get()
    html = _html(response)
    assert f'href="{Q}exports/{export.pk}.jsonl" download' in html
    assert "1 row." in html  # only the item both reviewers approved
    download = client.get(f"{Q}exports/{export.pk}.jsonl")
    assert download.status_code == 200
    assert download["Content-Disposition"] == (
        f'attachment; filename="support-answers-export-{export.pk}.jsonl"'
    )
    rows = [json.loads(line) for line in b"".join(download.streaming_content).splitlines()]
    assert [r["output"] for r in rows] == ["output 1"]
    assert rows[0]["lineage"]["annotators"] == ["sme", "compliance"]


def test_export_refusals_and_nothing_to_export(queue, disputed):
    assert _client("sme").post(Q + "exports").status_code == 403
    assert _client("viewer").post(Q + "exports", headers=HTMX).status_code == 403
    other = f.queue(queue.squad, name="Empty")
    empty = _client("owner").post(QS + "empty/exports", headers=HTMX)
    assert empty.status_code == 409 and "no approved items" in _html(empty)
    assert not ReviewExport.objects.filter(queue=other).exists()
    export = services.review_export(actor=UserFactory(username="owner"), queue=queue)
    assert _client("viewer").get(f"{Q}exports/{export.pk}.jsonl").status_code == 403
    assert _client("outsider").get(f"{Q}exports/{export.pk}.jsonl").status_code == 404


def test_export_without_htmx_redirects_to_the_dashboard(disputed):
    response = _client("owner").post(Q + "exports")
    assert response.status_code == 302 and response["Location"] == Q + "#exports"


# --- adding items by hand ------------------------------------------------------------------


def test_add_generations_by_id(squad, queue):
    done = f.generation(squad)
    other = f.generation(squad, output="Another answer.")
    client = _client("engineer")
    response = client.post(Q + "items/add", {"generations": f"{done.pk}, {other.pk}"}, headers=HTMX)
    assert response.status_code == 200
    assert "Added 2 items" in _html(response)
    again = client.post(Q + "items/add", {"generations": str(done.pk)}, headers=HTMX)
    assert "Added 0 items; skipped 1 already in the queue" in _html(again)
    bad = client.post(Q + "items/add", {"generations": "12x"}, headers=HTMX)
    assert bad.status_code == 422 and 'aria-describedby="add-error"' in _html(bad)
    missing = client.post(Q + "items/add", {"generations": "999999"}, headers=HTMX)
    assert missing.status_code == 404 and "999999" in _html(missing)
    assert _client("sme").post(Q + "items/add", {"generations": str(done.pk)}).status_code == 403
    assert ReviewItem.objects.filter(queue=queue).count() == 2


# --- the annotator -------------------------------------------------------------------------


def test_annotator_page_shows_the_next_item_with_the_rubric_and_shortcuts(queue):
    items = f.external_items(queue, 2)
    client = _client("sme")
    html = _html(client.get(Q + "annotate"))
    assert f"Item {items[0].pk}" in html
    assert '<fieldset class="rq-score" id="score-accuracy" data-score data-digits>' in html
    assert 'value="4" data-key="4"> 4 <kbd>4</kbd>' in html
    assert 'value="casual" data-key="2"> casual <kbd>2</kbd>' in html
    assert 'id="score-cites_source" data-score>' in html  # digits go there only with focus
    assert "output 0</textarea>" in html and 'name="seconds_spent" value="0"' in html
    assert "js/annotate.js" in html and 'id="shortcuts"' in html
    # A reload shows the same item (the reviewer's own claim).
    assert f"Item {items[0].pk}" in _html(client.get(Q + "annotate"))


@pytest.mark.parametrize(("username", "status"), [("viewer", 403), ("outsider", 404)])
def test_annotator_is_refused_to_who_cannot_annotate(queue, username, status):
    f.external_items(queue, 1)
    client = _client(username)
    assert client.get(Q + "annotate").status_code == status
    assert client.post(Q + "next", headers=HTMX).status_code == status


def test_annotator_needs_one_of_the_queues_roles(squad):
    queue = f.queue(squad, name="SME only", roles=["sme"])
    item = f.external_items(queue, 1)[0]
    client = _client("compliance")
    refused = client.get(QS + "sme-only/annotate")
    assert refused.status_code == 403 and "annotated by sme" in _html(refused)
    post = client.post(f"{QS}sme-only/items/{item.pk}/annotate", {"verdict": "approve"})
    assert post.status_code == 403
    assert f'href="{QS}sme-only/annotate"' not in _html(client.get(QS + "sme-only/"))


def test_annotating_stores_scores_edit_and_time_then_shows_the_next_item(queue):
    first, second = f.external_items(queue, 2)
    client = _client("sme")
    client.get(Q + "annotate")
    response = client.post(
        f"{Q}items/{first.pk}/annotate",
        {
            "verdict": "approve",
            "score_accuracy": "4",
            "score_tone": "casual",
            "score_cites_source": "",
            "edited_output": "output zero\r\nfixed",
            "comment": "Fine.",
            "seconds_spent": "12",
        },
        headers=HTMX,
    )
    assert response.status_code == 200
    html = _html(response)
    assert html.lstrip().startswith('<section class="card rq-panel" id="item-panel"')
    assert f"Saved: you approved item {first.pk} (edit distance" in html
    assert f"Item {second.pk}" in html and 'id="previous-item"' in html
    annotation = Annotation.objects.get(item=first)
    assert annotation.scores == {"accuracy": 4, "tone": "casual"}
    assert annotation.edited_output == "output zero\nfixed"
    assert annotation.edit_distance == services.Levenshtein.distance(
        "output 0", "output zero\nfixed"
    )
    assert (annotation.comment, annotation.seconds_spent) == ("Fine.", 12)


def test_an_untouched_editor_is_no_edit(queue):
    item = f.external_items(queue, 1)[0]
    ReviewItem.objects.filter(pk=item.pk).update(output="line one\nline two")
    _client("sme").post(
        f"{Q}items/{item.pk}/annotate",
        {"verdict": "reject", "score_accuracy": "1", "edited_output": "line one\r\nline two"},
        headers=HTMX,
    )
    annotation = Annotation.objects.get(item=item)
    assert annotation.edit_distance is None and annotation.edited_output == ""


def test_refused_annotation_is_shown_inline_with_what_was_entered(queue):
    item = f.external_items(queue, 1)[0]
    client = _client("sme")
    response = client.post(
        f"{Q}items/{item.pk}/annotate",
        {"verdict": "approve", "score_tone": "casual", "edited_output": "changed", "comment": "hm"},
        headers=HTMX,
    )
    assert response.status_code == 422
    html = _html(response)
    assert 'id="score-accuracy" data-score data-digits aria-invalid="true"' in html
    assert '<p class="error" id="score-accuracy-error">is required</p>' in html
    assert 'value="casual" data-key="2" checked>' in html
    assert "changed</textarea>" in html and ">hm</textarea>" in html
    assert not Annotation.objects.exists()
    bad = client.post(
        f"{Q}items/{item.pk}/annotate",
        {"verdict": "approve", "score_accuracy": "9"},
        headers=HTMX,
    )
    assert bad.status_code == 422 and "must be a number from 1 to 5 (got 9)" in _html(bad)


def test_queue_done_when_nothing_is_left(queue):
    item = f.external_items(queue, 1)[0]
    client = _client("sme")
    response = client.post(
        f"{Q}items/{item.pk}/annotate", {"verdict": "approve", "score_accuracy": "3"}, headers=HTMX
    )
    html = _html(response)
    assert "Queue done" in html and 'id="previous-item"' in html
    assert "Check again" in html
    again = _html(client.post(Q + "next", headers=HTMX))
    assert "Queue done" in again


def test_previous_shows_the_reviewers_earlier_items_and_next_returns(queue):
    first, second, third = f.external_items(queue, 3)
    sme = UserFactory(username="sme")
    _annotate("sme", first, "approve", accuracy=5)
    _annotate("sme", second, "reject", accuracy=2, tone="casual")
    _annotate("compliance", third, "approve")  # someone else's: never in sme's history
    client = _client("sme")
    current = services.review_next_item(actor=sme, queue=queue)
    assert current == third
    latest = _html(client.get(f"{Q}annotate?before={third.pk}", headers=HTMX))
    assert f"Item {second.pk}" in latest and "annotated by you" in latest
    assert 'value="2" data-key="2" checked>' in latest
    assert 'value="casual" data-key="2" checked>' in latest
    assert "Your verdict was reject." in latest
    earlier = _html(client.get(f"{Q}annotate?before={second.pk}", headers=HTMX))
    assert f"Item {first.pk}" in earlier and 'value="5" data-key="5" checked>' in earlier
    first_again = _html(client.get(f"{Q}annotate?before={first.pk}", headers=HTMX))
    assert (
        f"Item {first.pk}" in first_again and "this is the first one you annotated" in first_again
    )
    # Changing an earlier annotation replaces it; next is the item the queue holds for sme.
    changed = client.post(
        f"{Q}items/{first.pk}/annotate",
        {"verdict": "reject", "score_accuracy": "3", "seconds_spent": "4"},
        headers=HTMX,
    )
    assert f"Item {third.pk}" in _html(changed)
    annotation = Annotation.objects.get(item=first, reviewer=sme)
    assert (annotation.verdict, annotation.scores) == ("reject", {"accuracy": 3})
    assert f"Item {third.pk}" in _html(client.post(Q + "next", headers=HTMX))
    assert client.post(Q + "next")["Location"] == Q + "annotate"


def test_annotating_without_htmx_redirects_to_the_annotator(queue):
    item = f.external_items(queue, 1)[0]
    response = _client("owner").post(
        f"{Q}items/{item.pk}/annotate", {"verdict": "approve", "score_accuracy": "5"}
    )
    assert response.status_code == 302 and response["Location"] == Q + "annotate"


# --- sending a batch or a generation to a queue --------------------------------------------


def test_batch_page_loads_the_send_form(squad, queue):
    job = f.batch(squad, ["ok", "ok"])
    page = _html(_client("viewer").get(f"/squads/acme/batches/{job.pk}/"))
    assert f'hx-get="{QS}from-batch/{job.pk}" hx-trigger="load"' in page
    assert _client("viewer").get(f"{QS}from-batch/{job.pk}", headers=HTMX).content == b""
    assert _client("viewer").get(f"{QS}from-batch/{job.pk}").status_code == 403
    form = _html(_client("engineer").get(f"{QS}from-batch/{job.pk}", headers=HTMX))
    assert form.lstrip().startswith('<section class="card rq-send-card" id="send-to-review"')
    assert '<option value="support-answers">Support answers</option>' in form


def test_send_a_random_sample_of_a_batch(squad, queue):
    job = f.batch(squad, ["ok"] * 10 + ["failed"])
    client = _client("engineer")
    post = {"queue": "support-answers", "mode": "random", "n": "4", "seed": "7"}
    response = client.post(f"{QS}from-batch/{job.pk}", post, headers=HTMX)
    assert response.status_code == 200
    html = _html(response)
    assert "Added 4 rows to" in html and "Sample seed 7" in html
    again = _html(client.post(f"{QS}from-batch/{job.pk}", post, headers=HTMX))
    assert "Added 0 rows" in again and "skipped 4 already in the queue" in again
    everything = _html(
        client.post(
            f"{QS}from-batch/{job.pk}", {"queue": "support-answers", "mode": "all"}, headers=HTMX
        )
    )
    assert (
        "Added 6 rows" in everything
        and "skipped 4" in everything
        and "Sample seed" not in everything
    )
    assert ReviewItem.objects.filter(queue=queue, source="batch").count() == 10


def test_send_a_percentage_and_inline_errors(squad, queue):
    job = f.batch(squad, ["ok"] * 8)
    client = _client("owner")
    url = f"{QS}from-batch/{job.pk}"
    half = client.post(
        url, {"queue": "support-answers", "mode": "percent", "percent": "50"}, headers=HTMX
    )
    assert "Added 4 rows" in _html(half)
    no_n = client.post(url, {"queue": "support-answers", "mode": "random"}, headers=HTMX)
    assert no_n.status_code == 422
    assert (
        'id="send-n" name="n" min="1" step="1" value="" class="rq-narrow" aria-invalid="true"'
        in _html(no_n)
    )
    too_much = client.post(
        url, {"queue": "support-answers", "mode": "percent", "percent": "150"}, headers=HTMX
    )
    assert too_much.status_code == 422 and "at most 100" in _html(too_much)
    no_queue = client.post(url, {"mode": "all"}, headers=HTMX)
    assert no_queue.status_code == 422 and "Choose the review queue." in _html(no_queue)
    assert client.post(url, {"queue": "nope", "mode": "all"}, headers=HTMX).status_code == 404
    assert _client("sme").post(url, {"queue": "support-answers", "mode": "all"}).status_code == 403


def test_add_one_generation_from_its_page(squad, queue):
    done = f.generation(squad)
    page = _html(_client("viewer").get(f"/squads/acme/generations/{done.pk}"))
    assert f'hx-get="{QS}from-generation/{done.pk}" hx-trigger="load"' in page
    failed = f.generation(squad, status="failed")
    assert "from-generation" not in _html(
        _client("owner").get(f"/squads/acme/generations/{failed.pk}")
    )
    client = _client("engineer")
    url = f"{QS}from-generation/{done.pk}"
    assert 'id="add-to-review"' in _html(client.get(url, headers=HTMX))
    added = _html(client.post(url, {"queue": "support-answers"}, headers=HTMX))
    assert "Added to <a" in added
    assert "Already in <a" in _html(client.post(url, {"queue": "support-answers"}, headers=HTMX))
    assert ReviewItem.objects.get(queue=queue).generation_id == done.pk


# --- query counts --------------------------------------------------------------------------


def _sized_queue(squad, size: int) -> ReviewQueue:
    """A queue of `size` bulk-created items; the first two annotated by two reviewers each
    (one in dispute), sme holding a claim on the third."""
    queue = f.queue(squad)
    f.bulk_items(queue, size)
    first, second = ReviewItem.objects.filter(queue=queue).order_by("pk")[:2]
    _annotate("sme", first, "approve", accuracy=5)
    _annotate("compliance", first, "reject", accuracy=1)
    _annotate("sme", second)
    _annotate("compliance", second)
    services.review_next_item(actor=UserFactory(username="sme"), queue=queue)
    return queue


@pytest.mark.parametrize("size", [10, 1000])
def test_dashboard_query_count_is_fixed(squad, size, django_assert_num_queries):
    _sized_queue(squad, size)
    client = _client("owner")
    client.get(Q)  # warm the permission caches, as any earlier page would
    with django_assert_num_queries(11):
        response = client.get(Q)
    assert response.status_code == 200
    assert f"{size} · 2 complete · {size - 2} not yet reviewed" in _html(response)


@pytest.mark.parametrize("size", [10, 1000])
def test_annotator_query_count_is_fixed(squad, size, django_assert_num_queries):
    queue = _sized_queue(squad, size)
    client = _client("sme")
    client.get(Q + "annotate")
    third = ReviewItem.objects.filter(queue=queue).order_by("pk")[2]
    # Two of them for the progress line ("3 of N · M left"), at any size.
    with django_assert_num_queries(12):
        page = client.get(Q + "annotate")
    assert f"Item {third.pk}" in _html(page)
    assert f"<strong>3 of {size}</strong> · {size - 2} left" in _html(page)
    with django_assert_num_queries(10):
        history = client.get(f"{Q}annotate?before={third.pk}", headers=HTMX)
    assert "annotated by you" in _html(history)
    assert f"<strong>2 of {size}</strong> · {size - 2} left" in _html(history)
