"""Part B helpers: generations to review, queues and items created through the services
(or bulk-created where a test needs many), reviewers."""

from typing import Any

from django.utils import timezone

from apps.generation.models import BatchJob, Generation, ModelTarget
from apps.prompts.models import PromptVersion
from apps.reviews.models import ReviewItem, ReviewQueue
from apps.reviews.services import queues as services
from apps.squads import services as squads
from apps.squads.models import Squad
from tests.factories import UserFactory
from tests.prompts.factories import make_prompt

RUBRIC: list[dict[str, Any]] = [
    {"name": "accuracy", "kind": "numeric", "min": 1, "max": 5, "required": True},
    {"name": "tone", "kind": "categorical", "options": ["formal", "casual"]},
    {"name": "cites_source", "kind": "boolean"},
]
ANNOTATORS = ["owner", "prompt_engineer", "sme", "compliance"]
VARIABLES = {"customer": {"name": "Ada"}, "question": "Where is my parcel?"}


def version(squad: Squad) -> PromptVersion:
    """Version 1 of prompt 'support' (tests.prompts.factories), made once per squad."""
    template = squad.prompts.filter(slug="support").first()
    if template is None:
        template = make_prompt(squad, squad.created_by)
    return template.latest_version


def target(squad: Squad) -> ModelTarget:
    found, _ = ModelTarget.objects.get_or_create(
        squad=squad, name="local", defaults={"kind": "local", "base_model": "smollm2"}
    )
    return found


def generation(
    squad: Squad,
    *,
    status: str = Generation.Status.OK,
    output: str = "It left the depot today.",
    variables: dict[str, Any] | None = None,
    batch_job: BatchJob | None = None,
    row_index: int | None = None,
) -> Generation:
    return Generation.objects.create(
        squad=squad,
        prompt_version=version(squad),
        target=target(squad),
        target_used="local",
        variables=variables if variables is not None else VARIABLES,
        output_text=output,
        status=status,
        source=Generation.Source.BATCH if batch_job else Generation.Source.API,
        batch_job=batch_job,
        row_index=row_index,
        finished_at=timezone.now(),
    )


def batch(squad: Squad, statuses: list[str]) -> BatchJob:
    """A finished batch job with one generation per status, row by row."""
    job = BatchJob.objects.create(
        squad=squad,
        prompt_version=version(squad),
        target=target(squad),
        status=BatchJob.Status.SUCCEEDED,
        rows_path="/dev/null",
        rows_sha256="0" * 64,
        rows_total=len(statuses),
        rows_done=len(statuses),
    )
    for index, status in enumerate(statuses):
        generation(squad, status=status, output=f"answer {index}", batch_job=job, row_index=index)
    return job


def queue(
    squad: Squad,
    *,
    name: str = "Support answers",
    rubric: list[dict[str, Any]] | None = None,
    overlap: int = 2,
    roles: list[str] | None = None,
    by: str = "owner",
) -> ReviewQueue:
    return services.review_queue_create(
        actor=UserFactory(username=by),
        squad=squad,
        name=name,
        instructions="Check the facts.",
        rubric=RUBRIC if rubric is None else rubric,
        overlap=overlap,
        annotator_roles=ANNOTATORS if roles is None else roles,
    )


def external_items(queue: ReviewQueue, n: int, *, by: str = "owner") -> list[ReviewItem]:
    added = services.review_items_add_external(
        actor=UserFactory(username=by),
        queue=queue,
        items=[{"inputs": {"i": i}, "output": f"output {i}"} for i in range(n)],
    )
    return list(ReviewItem.objects.filter(pk__in=added.ids).order_by("pk"))


def bulk_items(queue: ReviewQueue, n: int) -> None:
    """n items straight into the table (and the queue's item count), for size tests."""
    ReviewItem.objects.bulk_create(
        [
            ReviewItem(
                queue=queue, inputs={"i": i}, output=f"output {i}", source=ReviewItem.Source.API
            )
            for i in range(n)
        ],
        batch_size=1000,
    )
    stats = queue.stats
    stats["items"] += n
    stats["by_count"]["0"] = stats["by_count"].get("0", 0) + n
    ReviewQueue.objects.filter(pk=queue.pk).update(stats=stats)
    queue.refresh_from_db()


def reviewers(squad: Squad, n: int, role: str = "sme", prefix: str = "rev") -> list:
    owner = squad.created_by
    users = []
    for i in range(n):
        user = UserFactory(username=f"{prefix}{i}")
        squads.membership_add(actor=owner, squad=squad, user=user, roles=[role])
        users.append(user)
    return users


def scores(accuracy: int = 4, tone: str | None = "formal", cites: bool | None = True) -> dict:
    given: dict[str, Any] = {"accuracy": accuracy}
    if tone is not None:
        given["tone"] = tone
    if cites is not None:
        given["cites_source"] = cites
    return given
