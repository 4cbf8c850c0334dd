import hashlib
import json
import random
from datetime import timedelta
from pathlib import Path

import pytest
from django.core.management import call_command
from django.utils import timezone

from apps.audit.models import AuditEvent
from apps.core.exceptions import Conflict, NotFound, PermissionDenied, ValidationFailed
from apps.generation.models import Generation
from apps.reviews import agreement
from apps.reviews.models import Annotation, ReviewAssignment, ReviewItem, ReviewQueue
from apps.reviews.selectors import queues as selectors
from apps.reviews.services import queues as services
from tests.factories import UserFactory, make_squad
from tests.reviews import queue_factories as f

pytestmark = pytest.mark.django_db


def user(name):
    return UserFactory(username=name)


def annotate(name, item, verdict="approve", scores=None, **kw):
    return services.review_annotate(
        actor=user(name),
        item=item,
        verdict=verdict,
        scores=f.scores() if scores is None else scores,
        **kw,
    )


def fresh(item):
    return ReviewItem.objects.get(pk=item.pk)


# --- queues -------------------------------------------------------------------------------


NUMERIC = {"name": "accuracy", "kind": "numeric", "min": 1, "max": 5}


@pytest.mark.parametrize(
    ("rubric", "field", "message"),
    [
        ({"name": "x"}, "rubric", "must be a list"),
        (["accuracy"], "rubric[0]", "must be an object"),
        ([{**NUMERIC, "name": "Accuracy"}], "rubric[0].name", "lowercase"),
        ([{"name": "verdict", "kind": "boolean"}], "rubric[0].name", "reserved"),
        ([NUMERIC, {**NUMERIC}], "rubric[1].name", "already the name"),
        ([{"name": "stars", "kind": "stars"}], "rubric[0].kind", "numeric, categorical or boolean"),
        ([{**NUMERIC, "min": 5}], "rubric[0].max", "greater than min"),
        ([{**NUMERIC, "min": "1"}], "rubric[0].min", "must be a number"),
        ([{**NUMERIC, "max": True}], "rubric[0].max", "must be a number"),
        ([{**NUMERIC, "step": 0}], "rubric[0].step", "positive"),
        ([{**NUMERIC, "step": 5}], "rubric[0].step", "must not exceed"),
        ([{**NUMERIC, "options": ["a", "b"]}], "rubric[0].options", "not a setting"),
        (
            [{"name": "tone", "kind": "categorical", "options": ["a"]}],
            "rubric[0].options",
            "2 to 50",
        ),
        (
            [{"name": "tone", "kind": "categorical", "options": ["a", " "]}],
            "rubric[0].options",
            "non-empty",
        ),
        (
            [{"name": "tone", "kind": "categorical", "options": ["a", "b", "a "]}],
            "rubric[0].options",
            "repeat 'a'",
        ),
        (
            [{"name": "tone", "kind": "categorical", "options": [str(i) for i in range(51)]}],
            "rubric[0].options",
            "2 to 50",
        ),
        ([{"name": "ok", "kind": "boolean", "required": "yes"}], "rubric[0].required", "true or"),
        ([{"name": "ok", "kind": "boolean", "label": ""}], "rubric[0].label", "1–100"),
        ([{"name": f"s{i}", "kind": "boolean"} for i in range(21)], "rubric", "limit is 20"),
    ],
)
def test_rubric_validation_names_index_and_field(rubric, field, message):
    with pytest.raises(ValidationFailed, match=message) as info:
        services.clean_rubric(rubric)
    assert info.value.field == field
    assert field in info.value.message or field == "rubric"


def test_rubric_errors_are_reported_all_at_once_and_valid_rubrics_normalised():
    with pytest.raises(ValidationFailed) as info:
        services.clean_rubric([{**NUMERIC, "min": 9}, {"name": "t", "kind": "categorical"}])
    assert [e["field"] for e in info.value.extra] == ["rubric[0].max", "rubric[1].options"]
    assert "nothing was stored" in info.value.message
    clean = services.clean_rubric(
        [
            {**NUMERIC, "min": 1.0, "step": 0.5, "required": True},
            {"name": "tone", "kind": "categorical", "options": [" formal", "casual "]},
            {"name": "ok", "kind": "boolean", "label": "Correct?"},
        ]
    )
    assert clean == [
        {
            "name": "accuracy",
            "kind": "numeric",
            "label": "accuracy",
            "description": "",
            "required": True,
            "min": 1,
            "max": 5,
            "step": 0.5,
        },
        {
            "name": "tone",
            "kind": "categorical",
            "label": "tone",
            "description": "",
            "required": False,
            "options": ["formal", "casual"],
        },
        {
            "name": "ok",
            "kind": "boolean",
            "label": "Correct?",
            "description": "",
            "required": False,
        },
    ]


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"overlap": 0}, "overlap"),
        ({"overlap": 11}, "overlap"),
        ({"overlap": True}, "overlap"),
        ({"annotator_roles": []}, "annotator_roles"),
        ({"annotator_roles": ["viewer"]}, "annotator_roles"),
        ({"annotator_roles": ["sme", "boss"]}, "annotator_roles"),
        ({"name": "  "}, "name"),
        ({"name": "!!!"}, "name"),
        ({"name": "x" * 101}, "name"),
        ({"instructions": "x" * 10_001}, "instructions"),
    ],
)
def test_queue_settings_are_validated(squad, kwargs, field):
    args = {"name": "Q", "rubric": [], "annotator_roles": ["sme"], **kwargs}
    with pytest.raises(ValidationFailed) as info:
        services.review_queue_create(actor=user("owner"), squad=squad, **args)
    assert info.value.field == field
    assert not ReviewQueue.objects.exists()


def test_queue_create_slugs_audits_and_refuses_duplicate_names(squad):
    queue = f.queue(squad, name="Support answers (EN)", roles=["compliance", "sme"])
    assert queue.slug == "support-answers-en"
    assert queue.annotator_roles == ["sme", "compliance"]  # registry order
    assert queue.stats["items"] == 0 and set(queue.stats["agreement"]) == {
        "verdict",
        "accuracy",
        "tone",
        "cites_source",
    }
    event = AuditEvent.objects.order_by("-sequence").first()
    assert event.action == "review.queue_created" and event.data["slug"] == queue.slug
    with pytest.raises(Conflict, match="already has a review queue named"):
        f.queue(squad, name="support answers (en)")
    other = make_squad(slug="other")
    assert f.queue(other, name="Support answers (EN)", by="other-owner").slug == queue.slug


def test_who_may_create_queues(squad):
    for name in ("sme", "viewer"):
        with pytest.raises(PermissionDenied, match="output review queues"):
            f.queue(squad, by=name)
    with pytest.raises(NotFound):
        f.queue(squad, by="outsider")
    assert f.queue(squad, name="By engineer", by="engineer").created_by.username == "engineer"
    assert f.queue(squad, name="By compliance", by="compliance")


def test_queue_update_keeps_the_slug_recomputes_fullness_and_freezes_a_used_rubric(squad):
    queue = f.queue(squad, overlap=2)
    first, second = f.external_items(queue, 2)
    annotate("sme", first)
    annotate("compliance", first)
    assert fresh(first).is_full
    updated = services.review_queue_update(
        actor=user("owner"), queue=queue, name="Renamed", overlap=3
    )
    assert (updated.name, updated.slug, updated.overlap) == ("Renamed", queue.slug, 3)
    assert not fresh(first).is_full
    event = AuditEvent.objects.order_by("-sequence").first()
    assert event.data["changes"]["overlap"] == {"before": 2, "after": 3}
    with pytest.raises(Conflict, match="rubric can no longer change"):
        services.review_queue_update(actor=user("owner"), queue=queue, rubric=[])
    # Unchanged values are no change (and no audit event).
    count = AuditEvent.objects.count()
    services.review_queue_update(actor=user("owner"), queue=queue, rubric=f.RUBRIC, overlap=3)
    assert AuditEvent.objects.count() == count
    services.review_queue_update(actor=user("owner"), queue=queue, archived=True)
    with pytest.raises(Conflict, match="archived"):
        services.review_next_item(actor=user("sme"), queue=ReviewQueue.objects.get(pk=queue.pk))
    assert second.pk


def test_an_unused_rubric_may_change(squad):
    queue = f.queue(squad)
    f.external_items(queue, 1)
    updated = services.review_queue_update(
        actor=user("owner"), queue=queue, rubric=[{"name": "ok", "kind": "boolean"}]
    )
    assert [s["name"] for s in updated.rubric] == ["ok"]
    assert set(updated.stats["agreement"]) == {"verdict", "ok"}
    assert updated.stats["items"] == 1


# --- items --------------------------------------------------------------------------------


def test_generations_added_by_hand_are_snapshotted_and_duplicates_skipped(squad):
    queue = f.queue(squad)
    ok = f.generation(squad, output="fine")
    invalid = f.generation(squad, status=Generation.Status.INVALID, output="{broken")
    added = services.review_items_add(
        actor=user("engineer"), queue=queue, generations=[ok, invalid, ok]
    )
    assert (added.created, added.skipped) == (2, 1)
    item = ReviewItem.objects.get(generation=ok)
    assert (item.output, item.inputs, item.model_name, item.source) == (
        "fine",
        f.VARIABLES,
        "local",
        "manual",
    )
    assert item.prompt_version == ok.prompt_version and item.created_by.username == "engineer"
    again = services.review_items_add(actor=user("engineer"), queue=queue, generations=[ok])
    assert (again.created, again.skipped) == (0, 1)
    assert ReviewQueue.objects.get(pk=queue.pk).stats["items"] == 2
    assert ReviewQueue.objects.get(pk=queue.pk).stats["by_count"] == {"0": 2}


def test_only_finished_generations_of_the_squad_can_be_added(squad):
    queue = f.queue(squad)
    failed = f.generation(squad, status=Generation.Status.FAILED)
    queued = f.generation(squad, status=Generation.Status.QUEUED)
    with pytest.raises(
        ValidationFailed, match=rf"not {failed.pk} \(failed\), {queued.pk} \(queued\)"
    ):
        services.review_items_add(actor=user("owner"), queue=queue, generations=[failed, queued])
    other = make_squad(slug="other")
    foreign = f.generation(other)
    with pytest.raises(ValidationFailed, match=f"{foreign.pk} are not in squad 'acme'"):
        services.review_items_add(actor=user("owner"), queue=queue, generations=[foreign])
    with pytest.raises(PermissionDenied):
        services.review_items_add(actor=user("sme"), queue=queue, generations=[f.generation(squad)])
    assert not ReviewItem.objects.exists()


def test_batch_rows_all_random_and_percent(squad):
    statuses = ["ok"] * 18 + ["failed", "invalid"]
    job = f.batch(squad, statuses)
    ok_ids = set(job.generations.filter(status="ok").values_list("pk", flat=True))

    def add(queue, **kw):
        return services.review_items_from_batch(
            actor=user("owner"), queue=queue, batch_job=job, **kw
        )

    everything = f.queue(squad, name="All")
    added = add(everything, mode="all")
    assert added.created == 18 and added.seed is None
    assert (
        set(ReviewItem.objects.filter(queue=everything).values_list("generation", flat=True))
        == ok_ids
    )
    assert ReviewItem.objects.filter(queue=everything, source="batch", batch_job=job).count() == 18
    assert add(everything, mode="all").skipped == 18

    sampled = [f.queue(squad, name=f"Random {i}") for i in range(3)]
    picks = []
    for q in sampled[:2]:
        assert add(q, mode="random", n=5, seed=7).created == 5
        picks.append(set(ReviewItem.objects.filter(queue=q).values_list("generation", flat=True)))
    assert picks[0] == picks[1] and picks[0] <= ok_ids  # same seed, same sample
    drawn = add(sampled[2], mode="random", n=50)
    assert drawn.created == 18 and isinstance(drawn.seed, int)

    share = f.queue(squad, name="Percent")
    assert add(share, mode="percent", percent=25, seed=1).created == 5  # 4.5 rounds up
    assert add(share, mode="percent", percent=25, seed=1).skipped == 5

    for kwargs, field in [
        ({"mode": "random"}, "n"),
        ({"mode": "random", "n": 0}, "n"),
        ({"mode": "percent", "percent": 0}, "percent"),
        ({"mode": "percent", "percent": 101}, "percent"),
        ({"mode": "some"}, "mode"),
    ]:
        with pytest.raises(ValidationFailed) as info:
            add(share, **kwargs)
        assert info.value.field == field


def test_a_batch_without_succeeded_rows_is_refused(squad):
    job = f.batch(squad, ["failed", "invalid"])
    with pytest.raises(Conflict, match=f"Batch {job.pk} has no succeeded rows"):
        services.review_items_from_batch(
            actor=user("owner"), queue=f.queue(squad), batch_job=job, mode="all"
        )


def test_external_items_are_all_or_nothing_with_the_bad_index(squad):
    queue = f.queue(squad)
    f.version(squad)
    good = {"inputs": {"q": 1}, "output": "yes"}
    items = [
        good,
        {**good, "prompt_version": {"prompt": "support", "version": 1}, "model_name": "gpt"},
        {"inputs": {"q": 3}, "output": "  "},
        {"inputs": [], "output": "x", "colour": "red"},
        {**good, "prompt_version": {"prompt": "support", "version": 9}},
    ]
    with pytest.raises(ValidationFailed) as info:
        services.review_items_add_external(actor=user("owner"), queue=queue, items=items)
    assert info.value.field == "items[2].output"
    assert [e["field"] for e in info.value.extra] == [
        "items[2].output",
        "items[3].colour",
        "items[3].inputs",
        "items[4].prompt_version",
    ]
    assert "prompt 'support' has no version 9" in info.value.extra[-1]["message"]
    assert not ReviewItem.objects.exists()
    assert ReviewQueue.objects.get(pk=queue.pk).stats["items"] == 0
    added = services.review_items_add_external(actor=user("owner"), queue=queue, items=items[:2])
    second = ReviewItem.objects.get(pk=added.ids[1])
    assert second.prompt_version.number == 1 and second.model_name == "gpt"
    assert second.source == "api"


# --- next item ----------------------------------------------------------------------------


def test_next_item_order_own_claim_and_overlap(squad):
    queue = f.queue(squad, overlap=2)
    one, two, three = f.external_items(queue, 3)
    assert services.review_next_item(actor=user("sme"), queue=queue) == one
    assert services.review_next_item(actor=user("sme"), queue=queue) == one  # own live claim
    annotate("sme", one)
    assert services.review_next_item(actor=user("sme"), queue=queue) == two
    assert services.review_next_item(actor=user("compliance"), queue=queue) == one
    assert fresh(one).is_full and fresh(one).claims == 2
    # one has two reviewers, two has sme and now engineer.
    assert services.review_next_item(actor=user("engineer"), queue=queue) == two
    assert services.review_next_item(actor=user("owner"), queue=queue) == three
    assert list(ReviewItem.objects.filter(queue=queue).values_list("claims", "is_full")) == [
        (2, True),
        (2, True),
        (1, False),
    ]


def test_a_reviewer_never_sees_an_item_twice_nor_an_item_beyond_overlap(squad):
    queue = f.queue(squad, overlap=2)
    f.external_items(queue, 6)
    seen: dict[str, list[int]] = {}
    for name in ["sme", "compliance", "sme", "engineer", "owner", "sme", "compliance"] * 4:
        item = services.review_next_item(actor=user(name), queue=queue)
        if item is not None:
            seen.setdefault(name, []).append(item.pk)
            annotate(name, item)
    for items in seen.values():
        assert len(items) == len(set(items))
    assert sum(len(v) for v in seen.values()) == 12
    assert all(c == 2 for c in ReviewItem.objects.values_list("annotation_count", flat=True))
    assert services.review_next_item(actor=user("sme"), queue=queue) is None


def test_expired_claims_are_released(squad, settings):
    queue = f.queue(squad, overlap=1)
    one, two = f.external_items(queue, 2)
    assert services.review_next_item(actor=user("sme"), queue=queue) == one
    assert services.review_next_item(actor=user("compliance"), queue=queue) == two
    assert services.review_next_item(actor=user("engineer"), queue=queue) is None
    ReviewAssignment.objects.filter(reviewer__username="sme").update(
        expires_at=timezone.now() - timedelta(seconds=1)
    )
    assert services.review_next_item(actor=user("engineer"), queue=queue) == one
    assert not ReviewAssignment.objects.filter(reviewer__username="sme").exists()
    assert fresh(one).claims == 1 and fresh(one).is_full
    # sme's claim is gone; the item is engineer's now and full.
    with pytest.raises(Conflict, match=f"Item {one.pk} in review queue '{queue.slug}' already"):
        annotate("sme", one)


def test_an_expired_claim_not_yet_released_still_counts_when_annotated(squad):
    queue = f.queue(squad, overlap=1)
    (one,) = f.external_items(queue, 1)
    services.review_next_item(actor=user("sme"), queue=queue)
    ReviewAssignment.objects.update(expires_at=timezone.now() - timedelta(minutes=5))
    annotate("sme", one)
    assert fresh(one).claims == 1 and fresh(one).annotation_count == 1
    assert ReviewAssignment.objects.get().completed_at is not None


def test_annotator_roles_of_the_queue_are_required(squad):
    queue = f.queue(squad, roles=["sme"])
    f.external_items(queue, 1)
    with pytest.raises(PermissionDenied, match=r"annotated by sme; your roles .* are compliance"):
        services.review_next_item(actor=user("compliance"), queue=queue)
    with pytest.raises(PermissionDenied, match="score, edit, approve"):
        services.review_next_item(actor=user("viewer"), queue=queue)
    with pytest.raises(NotFound):
        services.review_next_item(actor=user("outsider"), queue=queue)
    assert services.review_next_item(actor=user("sme"), queue=queue) is not None


# --- annotating ---------------------------------------------------------------------------


def test_annotation_stores_the_edit_and_its_distance(squad):
    queue = f.queue(squad)
    item = ReviewItem.objects.get(
        pk=services.review_items_add(
            actor=user("owner"), queue=queue, generations=[f.generation(squad)]
        ).ids[0]
    )
    a = annotate(
        "sme",
        item,
        edited_output="It left the depot yesterday.",
        comment="wrong day",
        seconds_spent=40,
    )
    # "today." -> "yesterday.": insert "yes", substitute o->e, insert r (shared "day.").
    assert (a.edited_output, a.edit_distance) == ("It left the depot yesterday.", 5)
    assert (a.comment, a.seconds_spent, a.scores) == ("wrong day", 40, f.scores())
    unchanged = annotate("compliance", item, edited_output=item.output)
    assert (unchanged.edited_output, unchanged.edit_distance) == ("", None)
    with pytest.raises(ValidationFailed, match="edited_output must be non-empty"):
        annotate("sme", item, edited_output="")
    event = AuditEvent.objects.filter(action="review.annotated").first()
    assert event.data["edit_distance"] == 5 and event.data["item"] == item.pk


@pytest.mark.parametrize(
    ("scores", "fields"),
    [
        ({"accuracy": 7}, ["scores.accuracy"]),
        ({"accuracy": 2.5}, []),
        ({"tone": "formal"}, ["scores.accuracy"]),
        (
            {"accuracy": 3, "tone": "rude", "cites_source": "yes"},
            ["scores.tone", "scores.cites_source"],
        ),
        ({"accuracy": 3, "length": 2}, ["scores.length"]),
        ({"accuracy": True}, ["scores.accuracy"]),
    ],
)
def test_scores_are_checked_against_the_rubric(squad, scores, fields):
    queue = f.queue(squad)
    (item,) = f.external_items(queue, 1)
    if not fields:
        assert annotate("sme", item, scores=scores).scores == scores
        return
    with pytest.raises(ValidationFailed) as info:
        annotate("sme", item, scores=scores)
    assert sorted(e["field"] for e in info.value.extra) == sorted(fields)
    assert not Annotation.objects.exists() and not ReviewAssignment.objects.exists()


def test_steps_are_enforced(squad):
    queue = f.queue(squad, rubric=[{**NUMERIC, "step": 0.5}])
    (item,) = f.external_items(queue, 1)
    with pytest.raises(ValidationFailed, match=r"1 plus a multiple of 0\.5"):
        annotate("sme", item, scores={"accuracy": 1.25})
    assert annotate("sme", item, scores={"accuracy": 4.0}).scores == {"accuracy": 4}


def test_re_annotating_updates_the_same_row_and_the_statistics(squad):
    queue = f.queue(squad)
    (item,) = f.external_items(queue, 1)
    first = annotate("sme", item, "approve", f.scores(accuracy=5), seconds_spent=10)
    again = annotate("sme", item, "reject", f.scores(accuracy=2), seconds_spent=5)
    assert again.pk == first.pk and Annotation.objects.count() == 1
    assert (again.verdict, again.scores["accuracy"], again.seconds_spent) == ("reject", 2, 15)
    stats = ReviewQueue.objects.get(pk=queue.pk).stats
    sme = user("sme")
    assert stats["reviewers"] == {
        str(sme.pk): {"annotated": 1, "approved": 0, "seconds": 15, "edited": 0}
    }
    assert stats["verdicts"] == {"reject": 1} and stats["scores"]["accuracy"] == {"2": 1}
    assert stats["by_count"] == {"1": 1} and stats["annotations"] == 1
    assert fresh(item).claims == 1 and fresh(item).approvals == 0


def test_disagreement_on_verdict_or_score(squad):
    queue = f.queue(squad)
    a, b, c = f.external_items(queue, 3)
    annotate("sme", a, "approve")
    annotate("compliance", a, "reject")
    annotate("sme", b, scores=f.scores(tone="formal"))
    annotate("compliance", b, scores=f.scores(tone="casual"))
    annotate("sme", c, scores=f.scores(tone=None))
    annotate("compliance", c, scores=f.scores(tone="casual"))  # missing is not disagreeing
    assert [fresh(i).disagreement for i in (a, b, c)] == [True, True, False]
    stats = ReviewQueue.objects.get(pk=queue.pk).stats
    assert (stats["disagreements"], stats["multi"]) == (2, 3)


# --- adjudication ------------------------------------------------------------------------


def test_adjudication_settles_items_with_two_annotations(squad):
    queue = f.queue(squad)
    item, single = f.external_items(queue, 2)
    annotate("sme", item, "approve")
    annotate("compliance", item, "reject")
    annotate("sme", single)
    with pytest.raises(PermissionDenied, match="settle disagreements"):
        services.review_adjudicate(actor=user("sme"), item=item, verdict="approve")
    with pytest.raises(Conflict, match="has 1 annotation"):
        services.review_adjudicate(actor=user("owner"), item=single, verdict="approve")
    settled = services.review_adjudicate(
        actor=user("compliance"), item=item, verdict="approve", output="Fixed.", note="ok"
    )
    assert (settled.adjudicated_verdict, settled.adjudicated_output) == ("approve", "Fixed.")
    assert not settled.disagreement and settled.adjudicated_by.username == "compliance"
    stats = ReviewQueue.objects.get(pk=queue.pk).stats
    assert (stats["disagreements"], stats["adjudicated"]) == (0, 1)
    # A later change of mind does not reopen a settled item.
    annotate("sme", item, "reject")
    assert not fresh(item).disagreement
    assert AuditEvent.objects.filter(action="review.adjudicated").count() == 1


# --- statistics ---------------------------------------------------------------------------


def test_incremental_statistics_equal_a_rebuild_after_random_annotations(squad):
    names = [u.username for u in f.reviewers(squad, 5)] + ["sme", "compliance"]
    queue = f.queue(
        squad, overlap=3, rubric=[*f.RUBRIC, {**NUMERIC, "name": "fluency", "step": 0.5}]
    )
    items = f.external_items(queue, 12)
    rng = random.Random(5)
    done: dict[int, set[str]] = {}
    for _ in range(120):
        item = rng.choice(items)
        name = rng.choice(names)
        if name not in done.get(item.pk, set()) and len(done.get(item.pk, set())) >= 3:
            continue
        scores = {
            "accuracy": rng.randint(1, 5),
            "fluency": rng.choice([1, 1.5, 2, 4.5]),
            "tone": rng.choice(["formal", "casual", None]),
            "cites_source": rng.choice([True, False, None]),
        }
        annotate(
            name,
            item,
            rng.choice(["approve", "reject"]),
            {k: v for k, v in scores.items() if v is not None},
            edited_output=rng.choice([None, "edited " * rng.randint(1, 3)]),
            seconds_spent=rng.randint(0, 90),
        )
        done.setdefault(item.pk, set()).add(name)
        if rng.random() < 0.05 and len(done[item.pk]) >= 2:
            services.review_adjudicate(actor=user("owner"), item=item, verdict="approve")
    incremental = ReviewQueue.objects.get(pk=queue.pk).stats
    counters = list(ReviewItem.objects.values_list("annotation_count", "approvals", "disagreement"))
    rebuilt = services.review_queue_stats_rebuild(queue=queue).stats
    assert rebuilt == incremental
    assert list(
        ReviewItem.objects.values_list("annotation_count", "approvals", "disagreement")
    ) == (counters)
    # And the agreement figures are those of the from-scratch functions on the table.
    table: dict[int, list] = {}
    for item_id, verdict in Annotation.objects.values_list("item_id", "verdict"):
        table.setdefault(item_id, []).append(verdict)
    nominal = agreement.Accumulator("nominal", rebuilt["agreement"]["verdict"])
    assert nominal.alpha() == pytest.approx(agreement.alpha(table, "nominal"))
    assert nominal.percent() == pytest.approx(agreement.percent_agreement(table))


def test_rebuild_repairs_drifted_counters_and_the_command_runs_it(squad, capsys):
    queue = f.queue(squad)
    (item,) = f.external_items(queue, 1)
    annotate("sme", item)
    expected = ReviewQueue.objects.get(pk=queue.pk).stats
    ReviewQueue.objects.filter(pk=queue.pk).update(stats={})
    ReviewItem.objects.filter(pk=item.pk).update(annotation_count=0, approvals=0)
    call_command("review_stats_rebuild", "acme", queue.slug)
    assert ReviewQueue.objects.get(pk=queue.pk).stats == expected
    assert (fresh(item).annotation_count, fresh(item).approvals) == (1, 1)
    assert "1 item(s) corrected" in capsys.readouterr().out


# --- dashboard ----------------------------------------------------------------------------


def test_dashboard_figures(squad):
    queue = f.queue(squad, overlap=2)
    a, b, c, _d = f.external_items(queue, 4)
    annotate("sme", a, "approve", f.scores(accuracy=4, tone="formal"), seconds_spent=30)
    annotate("compliance", a, "approve", f.scores(accuracy=4, tone="formal"), seconds_spent=10)
    annotate("sme", b, "approve", f.scores(accuracy=5), edited_output="better", seconds_spent=20)
    annotate("compliance", b, "reject", f.scores(accuracy=2, cites=False))
    annotate("sme", c, "reject", f.scores(accuracy=1))
    viewer = user("viewer")
    queue = selectors.review_queue_get_for_user(user=viewer, squad=squad, slug=queue.slug)
    board = selectors.review_queue_dashboard(user=viewer, queue=queue)
    assert (board["items"], board["items_complete"], board["items_unreviewed"]) == (4, 2, 1)
    assert (board["annotations"], board["annotations_target"]) == (5, 8)
    assert board["progress"] == 5 / 8 and board["approval_rate"] == 3 / 5
    assert board["verdicts"] == {"approve": 3, "reject": 2}
    assert board["edits"] == {"count": 1, "mean_distance": 6.0}  # "output 1" -> "better"
    assert board["reviewers"][0] == {
        "username": "sme",
        "annotated": 3,
        "approved": 2,
        "approval_rate": 2 / 3,
        "edited": 1,
        "seconds": 50,
        "mean_seconds": 50 / 3,
    }
    scores = {s["name"]: s["distribution"] for s in board["scores"]}
    assert scores["accuracy"] == [
        {"value": 1, "count": 1},
        {"value": 2, "count": 1},
        {"value": 4, "count": 2},
        {"value": 5, "count": 1},
    ]
    assert scores["tone"] == [{"value": "formal", "count": 5}, {"value": "casual", "count": 0}]
    assert scores["cites_source"] == [{"value": True, "count": 4}, {"value": False, "count": 1}]
    by_name = {row["name"]: row for row in board["agreement"]}
    verdicts = {a.pk: ["approve", "approve"], b.pk: ["approve", "reject"]}
    assert by_name["verdict"]["alpha"] == pytest.approx(agreement.alpha(verdicts))
    assert by_name["verdict"]["percent"] == 0.5 and by_name["verdict"]["units"] == 2
    accuracy = {a.pk: [4, 4], b.pk: [5, 2]}
    assert by_name["accuracy"]["alpha"] == pytest.approx(agreement.alpha(accuracy, "interval"))
    assert by_name["accuracy"]["level"] == "interval"
    assert by_name["tone"]["alpha"] is None  # every tone given is formal: undefined
    assert board["disagreements"] == 1
    assert [row["id"] for row in board["disagreement_items"]] == [b.pk]
    assert board["disagreement_items"][0]["preview"] == "output 1"


def test_annotations_are_blind_except_for_adjudicators_and_managers(squad):
    queue = f.queue(squad)
    (item,) = f.external_items(queue, 1)
    annotate("sme", item)
    annotate("compliance", item)

    def visible(name):
        got = selectors.review_item_get_for_user(user=user(name), queue=queue, item_id=item.pk)
        return sorted(a.reviewer.username for a in got.annotations.all())

    assert visible("sme") == ["sme"]
    assert visible("viewer") == []
    assert visible("owner") == visible("engineer") == ["compliance", "sme"]
    with pytest.raises(NotFound):
        selectors.review_item_get_for_user(user=user("sme"), queue=queue, item_id=item.pk + 99)


def test_item_pages_by_id(squad):
    queue = f.queue(squad)
    items = f.external_items(queue, 5)
    page = selectors.review_item_list_for_user(user=user("viewer"), queue=queue, limit=2)
    assert [i.pk for i in page.items] == [i.pk for i in items[:2]]
    last = selectors.review_item_list_for_user(
        user=user("viewer"), queue=queue, after=items[3].pk, limit=2
    )
    assert [i.pk for i in last.items] == [items[4].pk] and last.next_after is None
    assert page.next_after == items[1].pk


# --- export -------------------------------------------------------------------------------


def test_export_writes_approved_rows_with_lineage(squad, settings, tmp_path):
    settings.DATA_DIR = tmp_path
    queue = f.queue(squad, overlap=2)
    with pytest.raises(Conflict, match="no approved items"):
        services.review_export(actor=user("owner"), queue=queue)
    generated = f.generation(squad, output="It left the depot today.")
    services.review_items_add(actor=user("owner"), queue=queue, generations=[generated])
    both, split, settled, half = f.external_items(queue, 4)
    (from_gen,) = ReviewItem.objects.filter(generation=generated)
    annotate("sme", from_gen, edited_output="It left the depot yesterday.")
    annotate("compliance", from_gen)
    annotate("sme", both)
    annotate("compliance", both, edited_output="first edit")
    annotate("sme", both, edited_output="sme's later edit")
    annotate("sme", split, "approve")
    annotate("compliance", split, "reject")
    annotate("sme", settled, "reject")
    annotate("compliance", settled, "reject")
    services.review_adjudicate(
        actor=user("owner"), item=settled, verdict="approve", output="Settled text"
    )
    annotate("sme", half)  # one of two reviewers: not approved yet
    with pytest.raises(PermissionDenied):
        services.review_export(actor=user("sme"), queue=queue)
    export = services.review_export(actor=user("engineer"), queue=queue)
    data = Path(export.path).read_bytes()
    assert export.sha256 == hashlib.sha256(data).hexdigest() and export.row_count == 3
    assert Path(export.path).is_relative_to(tmp_path)
    rows = {row["lineage"]["item"]: row for row in map(json.loads, data.splitlines())}
    assert set(rows) == {from_gen.pk, both.pk, settled.pk}
    first = rows[from_gen.pk]
    assert first["output"] == "It left the depot yesterday."
    assert first["messages"][-1] == {"role": "assistant", "content": first["output"]}
    assert first["messages"][0]["content"] == "You help Ada (free)."
    assert first["inputs"] == f.VARIABLES and first["model"] == "local"
    assert first["prompt"]["number"] == 1 and len(first["prompt"]["hash"]) == 64
    assert first["lineage"] == {
        "queue": queue.slug,
        "queue_id": queue.pk,
        "item": from_gen.pk,
        "generation": generated.pk,
        "annotators": ["sme", "compliance"],
        "adjudicated_by": None,
        "edited": True,
        "edit_distance": 5,
    }
    assert rows[both.pk]["output"] == "sme's later edit" and "messages" not in rows[both.pk]
    assert rows[both.pk]["prompt"] is None
    assert rows[settled.pk]["output"] == "Settled text"
    assert rows[settled.pk]["lineage"]["adjudicated_by"] == "owner"
    assert export.lineage["items"] == sorted(rows)
    event = AuditEvent.objects.order_by("-sequence").first()
    assert event.action == "review.exported" and event.data["sha256"] == export.sha256
