"""Generations, feedback and review items with known numbers, bulk-created where a test
needs many (the services are exercised by the tests that are about them)."""

from datetime import datetime
from decimal import Decimal
from typing import Any

from django.utils import timezone

from apps.feedback.models import Feedback
from apps.generation.models import Generation
from apps.prompts.models import PromptVersion
from apps.reviews.models import ReviewItem, ReviewQueue
from apps.squads.models import Squad
from tests.reviews import queue_factories as qf


def version(squad: Squad) -> PromptVersion:
    return qf.version(squad)


def generation(
    squad: Squad,
    *,
    prompt_version: PromptVersion | None = None,
    latency_ms: int = 100,
    input_tokens: int = 10,
    output_tokens: int = 20,
    cost: str = "0.001",
    created_at: datetime | None = None,
    status: str = Generation.Status.OK,
    output: str = "It left the depot today.",
) -> Generation:
    return Generation.objects.create(
        squad=squad,
        prompt_version=prompt_version or qf.version(squad),
        target=qf.target(squad),
        target_used="local",
        variables=qf.VARIABLES,
        output_text=output,
        status=status,
        source=Generation.Source.API,
        latency_ms=latency_ms,
        input_tokens=input_tokens,
        output_tokens=output_tokens,
        cost=Decimal(cost),
        created_at=created_at or timezone.now(),
        finished_at=timezone.now(),
    )


def feedback_rows(generation: Generation, values: list[float], **extra: Any) -> list[Feedback]:
    """Score feedback with the given normalised values, oldest first."""
    return Feedback.objects.bulk_create(
        Feedback(
            squad_id=generation.squad_id,
            generation=generation,
            prompt_version_id=generation.prompt_version_id,
            kind=Feedback.Kind.SCORE,
            score_raw=v,
            scale_min=0,
            scale_max=1,
            score=v,
            value=v,
            **extra,
        )
        for v in values
    )


def queue(squad: Squad, slug: str = "drift") -> ReviewQueue:
    return ReviewQueue.objects.create(
        squad=squad, name=slug, slug=slug, rubric=[], overlap=1, annotator_roles=qf.ANNOTATORS
    )


def judged_items(
    queue: ReviewQueue,
    prompt_version: PromptVersion,
    verdicts: list[bool],
    created_at: datetime | None = None,
) -> list[ReviewItem]:
    """Review items already judged by one annotator each (approved or not), as counters."""
    return ReviewItem.objects.bulk_create(
        ReviewItem(
            queue=queue,
            prompt_version=prompt_version,
            inputs={},
            output="out",
            source=ReviewItem.Source.API,
            claims=1,
            is_full=True,
            annotation_count=1,
            approvals=int(ok),
            **({"created_at": created_at} if created_at else {}),
        )
        for ok in verdicts
    )
