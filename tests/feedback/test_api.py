import pytest

from apps.audit.models import AuditEvent
from apps.feedback.models import Feedback
from tests.feedback import factories as f

URL = "/api/v1/squads/acme/generations/{}/feedback"


@pytest.fixture
def generation(squad):
    return f.generation(squad, output="The parcel left the depot today.")


@pytest.mark.parametrize(
    ("body", "status", "field", "message"),
    [
        ({}, 422, "thumbs", "needs one of thumbs"),
        ({"comment": "nice"}, 422, "thumbs", "needs one of thumbs"),
        ({"thumbs": 0}, 422, "thumbs", "1 (up) or -1 (down)"),
        ({"thumbs": True}, 422, "thumbs", "1 (up) or -1 (down)"),
        ({"thumbs": "up"}, 422, "thumbs", "1 (up) or -1 (down)"),
        ({"thumbs": 1, "score": 0.5}, 422, "score", "one signal per feedback"),
        ({"score": 0.5, "edited_text": "x"}, 422, "edited_text", "one signal"),
        ({"score": "high"}, 422, "score", "must be a number"),
        ({"score": 1.5}, 422, "score", "outside the scale 0..1"),
        ({"score": 6, "scale": [1, 5]}, 422, "score", "outside the scale 1..5"),
        ({"score": 3, "scale": [5, 1]}, 422, "scale", "from low to high"),
        ({"score": 3, "scale": [1]}, 422, "scale", "two numbers"),
        ({"score": 3, "scale": "1..5"}, 422, "scale", "two numbers"),
        ({"thumbs": 1, "scale": [1, 5]}, 422, "scale", "only used with score"),
        ({"thumbs": 1, "comment": 5}, 422, "comment", "must be text"),
        ({"thumbs": 1, "comment": "x" * 5001}, 422, "comment", "limit is 5000"),
        ({"thumbs": 1, "external_user_id": "u" * 201}, 422, "external_user_id", "limit is 200"),
        ({"edited_text": 42}, 422, "edited_text", "must be text"),
    ],
)
def test_feedback_validation(generation, api_as, body, status, field, message):
    response = api_as("viewer").call("POST", URL.format(generation.pk), body)
    assert response.status_code == status, response.content
    assert response.json()["field"] == field
    assert message in response.json()["detail"]
    assert not Feedback.objects.exists()


def test_scale_without_score_is_named(generation, api_as):
    response = api_as("viewer").call("POST", URL.format(generation.pk), {"scale": [1, 5]})
    assert response.status_code == 422
    assert response.json()["field"] == "thumbs"


def test_thumbs_score_and_edit_are_stored_normalised(generation, api_as):
    client = api_as("viewer")
    up = client.call("POST", URL.format(generation.pk), {"thumbs": 1, "external_user_id": "c-7"})
    down = client.call("POST", URL.format(generation.pk), {"thumbs": -1, "comment": "wrong"})
    score = client.call("POST", URL.format(generation.pk), {"score": 4, "scale": [1, 5]})
    edited = "The parcel left the warehouse today."
    edit = client.call("POST", URL.format(generation.pk), {"edited_text": edited})
    assert [r.status_code for r in (up, down, score, edit)] == [201] * 4
    assert up.json()["value"] == 1.0 and up.json()["external_user_id"] == "c-7"
    assert down.json()["value"] == 0.0 and down.json()["thumbs"] == -1
    body = score.json()
    assert body["score_raw"] == 4 and body["score"] == 0.75 and body["scale"] == [1, 5]
    body = edit.json()
    from rapidfuzz.distance import Levenshtein

    original = generation.output_text
    assert body["edit_distance"] == Levenshtein.distance(original, edited) == 7
    assert body["edit_similarity"] == pytest.approx(1 - 7 / max(len(original), len(edited)))
    stored = Feedback.objects.get(pk=body["id"])
    assert stored.edited_text == edited and stored.created_by.username == "viewer"
    assert stored.prompt_version_id == generation.prompt_version_id
    listed = client.call("GET", URL.format(generation.pk)).json()
    assert [row["kind"] for row in listed] == ["thumbs", "thumbs", "score", "edit"]
    assert listed[0]["prompt"] == "support" and listed[0]["version"] == 1
    events = AuditEvent.objects.filter(action="feedback.submitted")
    assert events.count() == 4
    assert events.last().data["edit_distance"] == 7


def test_unfinished_generation_and_foreign_squads(squad, api_as):
    from apps.generation.models import Generation
    from tests.factories import UserFactory, make_squad

    running = f.generation(squad, status=Generation.Status.RUNNING)
    response = api_as("owner").call("POST", URL.format(running.pk), {"thumbs": 1})
    assert response.status_code == 409 and response.json()["field"] == "generation"
    other = make_squad(owner=UserFactory(username="else-owner"), slug="else")
    theirs = f.generation(other)
    assert api_as("owner").call("POST", URL.format(theirs.pk), {"thumbs": 1}).status_code == 404
    elsewhere = f"/api/v1/squads/else/generations/{theirs.pk}/feedback"
    assert api_as("owner").call("POST", elsewhere, {"thumbs": 1}).status_code == 404
    assert api_as("outsider").call("GET", URL.format(running.pk)).status_code == 404


def test_edit_of_a_generation_without_text_is_refused(squad, api_as):
    empty = f.generation(squad, output="")
    response = api_as("sme").call("POST", URL.format(empty.pk), {"edited_text": "new"})
    assert response.status_code == 409 and response.json()["field"] == "edited_text"


def test_feedback_post_costs_the_same_with_many_samples(
    generation, api_as, django_assert_max_num_queries
):
    client = api_as("viewer")
    client.call("POST", URL.format(generation.pk), {"thumbs": 1})  # warm the caches
    with django_assert_max_num_queries(30) as few:
        client.call("POST", URL.format(generation.pk), {"thumbs": 1})
    f.feedback_rows(generation, [0.9] * 300)  # a full baseline and window to check
    with django_assert_max_num_queries(len(few.captured_queries) + 2):  # + previous alert, window
        response = client.call("POST", URL.format(generation.pk), {"thumbs": 1})
    assert response.status_code == 201


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"score": 10**400}, "score"),
        ({"score": 3, "scale": [1, 10**400]}, "scale"),
    ],
)
def test_numbers_beyond_float_range_are_refused_not_a_500(generation, api_as, body, field):
    response = api_as("viewer").call("POST", URL.format(generation.pk), body)
    assert response.status_code == 422, response.content
    assert response.json()["field"] == field
    assert not Feedback.objects.exists()


def test_rule_threshold_beyond_float_range_is_refused_not_a_500(squad, api_as):
    response = api_as("engineer").call(
        "PUT", "/api/v1/squads/acme/alert-rule", {"threshold": 10**400}
    )
    assert response.status_code == 422, response.content
    assert response.json()["field"] == "threshold"


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"thumbs": 1, "comment": "ok\x00"}, "comment"),
        ({"thumbs": 1, "external_user_id": "u\x00"}, "external_user_id"),
        ({"edited_text": "The parcel\x00"}, "edited_text"),
    ],
)
def test_nul_characters_are_refused(generation, api_as, body, field):
    # PostgreSQL text cannot hold NUL: stored, it would be a 500 there.
    response = api_as("viewer").call("POST", URL.format(generation.pk), body)
    assert response.status_code == 422, response.content
    assert response.json()["field"] == field
    assert not Feedback.objects.exists()


@pytest.mark.parametrize("score", [1e308, -1e308, 0.0])
def test_a_scale_wider_than_a_float_holds_is_refused(generation, api_as, score):
    # high - low overflowed to inf: (score - low) / inf gave NaN or 0 and the NaN row
    # failed the value constraint with a 500.
    response = api_as("viewer").call(
        "POST", URL.format(generation.pk), {"score": score, "scale": [-1e308, 1e308]}
    )
    assert response.status_code == 422, response.content
    assert response.json()["field"] == "scale"
    assert not Feedback.objects.exists()
    wide = api_as("sme").call(
        "POST", URL.format(generation.pk), {"score": 1e307, "scale": [-1e307, 1e307]}
    )
    assert wide.status_code == 201 and wide.json()["value"] == pytest.approx(1.0)
