import hashlib
import json

import pytest

from apps.reviews.models import ReviewItem
from tests.reviews import queue_factories as f

pytestmark = pytest.mark.django_db
Q = "/api/v1/squads/acme/review-queues"


@pytest.fixture
def queue(squad):
    return f.queue(squad, overlap=2)


def test_queue_crud(squad, api_as):
    owner = api_as("owner")
    body = {"name": "Tone check", "rubric": f.RUBRIC, "overlap": 2, "annotator_roles": ["sme"]}
    created = owner.call("POST", Q, body)
    assert created.status_code == 201, created.content
    assert created.json()["slug"] == "tone-check" and created.json()["items"] == 0
    bad = owner.call("POST", Q, {**body, "name": "Other", "rubric": [{"name": "x", "kind": "y"}]})
    assert bad.status_code == 422
    assert bad.json()["field"] == "rubric[0].kind" and "rubric[0].kind" in bad.json()["detail"]
    assert owner.call("POST", Q, body).status_code == 409
    changed = owner.call("PATCH", f"{Q}/tone-check", {"overlap": 3, "name": "Tone"})
    assert changed.json()["overlap"] == 3 and changed.json()["slug"] == "tone-check"
    assert [q["name"] for q in api_as("viewer").call("GET", Q).json()] == ["Tone"]
    assert api_as("viewer").call("GET", f"{Q}/tone-check").status_code == 200
    assert api_as("viewer").call("GET", f"{Q}/nope").status_code == 404
    assert api_as("outsider").call("GET", Q).status_code == 404


def test_adding_items_by_generation_external_and_batch(squad, queue, api_as):
    owner = api_as("owner")
    generation = f.generation(squad)
    added = owner.call("POST", f"{Q}/{queue.slug}/items", {"generations": [generation.pk]})
    assert added.status_code == 201 and added.json()["created"] == 1
    missing = owner.call("POST", f"{Q}/{queue.slug}/items", {"generations": [generation.pk + 50]})
    assert missing.status_code == 404 and str(generation.pk + 50) in missing.json()["detail"]
    items = [{"inputs": {}, "output": "a"}, {"inputs": {}, "output": ""}]
    refused = owner.call("POST", f"{Q}/{queue.slug}/items", {"items": items})
    assert refused.status_code == 422
    assert refused.json()["errors"] == [
        {"field": "items[1].output", "message": "must be non-empty text"}
    ]
    assert ReviewItem.objects.count() == 1
    both = owner.call("POST", f"{Q}/{queue.slug}/items", {"items": items[:1], "generations": []})
    assert both.status_code == 422
    job = f.batch(squad, ["ok"] * 10)
    sampled = owner.call(
        "POST",
        f"{Q}/{queue.slug}/items/from-batch",
        {"batch": job.pk, "mode": "percent", "percent": 30},
    )
    assert sampled.status_code == 201, sampled.content
    assert sampled.json()["created"] == 3 and isinstance(sampled.json()["seed"], int)
    assert api_as("sme").call(
        "POST", f"{Q}/{queue.slug}/items", {"items": items[:1]}
    ).status_code == (403)


def test_review_flow_through_the_api(squad, queue, api_as, settings, tmp_path):
    settings.DATA_DIR = tmp_path
    f.external_items(queue, 2)
    sme, compliance = api_as("sme"), api_as("compliance")
    claimed = sme.call("POST", f"{Q}/{queue.slug}/next")
    assert claimed.status_code == 200
    item = claimed.json()
    assert item["output"] == "output 0" and item["annotations"] == [] and item["claims"] == 1
    url = f"{Q}/{queue.slug}/items/{item['id']}"
    bad = sme.call("POST", f"{url}/annotations", {"verdict": "approve", "scores": {"accuracy": 9}})
    assert bad.status_code == 422 and bad.json()["field"] == "scores.accuracy"
    done = sme.call(
        "POST",
        f"{url}/annotations",
        {
            "verdict": "approve",
            "scores": {"accuracy": 4},
            "edited_output": "output zero",
            "comment": "spelled out",
            "seconds_spent": 12,
        },
    )
    assert done.status_code == 200, done.content
    assert done.json()["edit_distance"] == 4 and done.json()["reviewer"] == "sme"
    assert compliance.call("POST", f"{Q}/{queue.slug}/next").json()["id"] == item["id"]
    compliance.call("POST", f"{url}/annotations", {"verdict": "reject", "scores": {"accuracy": 2}})
    # Blind: sme sees only their own annotation, the owner sees both.
    assert [a["reviewer"] for a in sme.call("GET", url).json()["annotations"]] == ["sme"]
    owner = api_as("owner")
    assert len(owner.call("GET", url).json()["annotations"]) == 2

    board = api_as("viewer").call("GET", f"{Q}/{queue.slug}/dashboard")
    assert board.status_code == 200, board.content
    assert board.json()["disagreements"] == 1
    assert board.json()["disagreement_items"][0]["id"] == item["id"]
    assert [a["name"] for a in board.json()["agreement"]] == [
        "verdict",
        "accuracy",
        "tone",
        "cites_source",
    ]

    assert sme.call("POST", f"{url}/adjudication", {"verdict": "approve"}).status_code == 403
    settled = compliance.call(
        "POST", f"{url}/adjudication", {"verdict": "approve", "note": "fine after the edit"}
    )
    assert settled.status_code == 200 and settled.json()["adjudicated"]["by"] == "compliance"
    assert not settled.json()["disagreement"]

    page = api_as("viewer").call("GET", f"{Q}/{queue.slug}/items?limit=1")
    assert page.json()["next_after"] == item["id"] and len(page.json()["items"]) == 1

    assert sme.call("POST", f"{Q}/{queue.slug}/exports").status_code == 403
    engineer = api_as("engineer")
    export = engineer.call("POST", f"{Q}/{queue.slug}/exports")
    assert export.status_code == 201, export.content
    assert export.json()["row_count"] == 1
    download = engineer.client.get(export.json()["download_url"], headers=engineer.headers)
    assert download.status_code == 200
    content = b"".join(download.streaming_content)
    assert hashlib.sha256(content).hexdigest() == export.json()["sha256"]
    assert download["X-Content-SHA256"] == export.json()["sha256"]
    row = json.loads(content)
    assert row["output"] == "output zero" and row["lineage"]["annotators"] == ["sme", "compliance"]
    assert [e["id"] for e in engineer.call("GET", f"{Q}/{queue.slug}/exports").json()] == [
        export.json()["id"]
    ]
    assert api_as("viewer").client.get(
        export.json()["download_url"], headers=api_as("viewer").headers
    ).status_code == (403)


def test_next_answers_204_when_nothing_is_left(squad, queue, api_as):
    sme = api_as("sme")
    assert sme.call("POST", f"{Q}/{queue.slug}/next").status_code == 204
    assert api_as("viewer").call("POST", f"{Q}/{queue.slug}/next").status_code == 403
