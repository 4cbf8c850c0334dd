"""One function per domain event: builds the event's data from the domain objects and
emits it. The services call these inside their transactions (one line each), so what
a receiver gets for an event is defined here, in one place.

Data carries ids, slugs, numbers, states, usernames, hashes and relative URLs; never
secrets, prompt messages, variables or outputs.
"""

from typing import Any

from django.contrib.auth.models import AbstractBaseUser
from django.urls import reverse

from apps.webhooks import events
from apps.webhooks.events import emit


def _who(user: AbstractBaseUser | None) -> str | None:
    return user.get_username() if user is not None and user.is_authenticated else None


def _version_url(squad_slug: str, template_slug: str, number: int) -> str:
    return reverse(
        "prompts:version", kwargs={"squad": squad_slug, "slug": template_slug, "number": number}
    )


def version_created(*, version: Any, actor: AbstractBaseUser) -> None:
    template = version.template
    squad = template.squad
    emit(
        squad_id=squad.pk,
        event=events.VERSION_CREATED,
        data={
            "squad": squad.slug,
            "template": template.slug,
            "version": version.number,
            "version_id": version.pk,
            "content_hash": version.content_hash,
            "parent": version.parent.number if version.parent_id else None,
            "commit_message": version.commit_message,
            "actor": _who(actor),
            "url": _version_url(squad.slug, template.slug, version.number),
        },
    )


def label_moved(
    *, label: Any, previous: Any | None, protected: bool, actor: AbstractBaseUser
) -> None:
    template = label.template
    squad = template.squad
    emit(
        squad_id=squad.pk,
        event=events.LABEL_MOVED,
        data={
            "squad": squad.slug,
            "template": template.slug,
            "label": label.name,
            "from_version": previous.number if previous is not None else None,
            "to_version": label.version.number,
            "content_hash": label.version.content_hash,
            "protected": protected,
            "actor": _who(actor),
            "url": _version_url(squad.slug, template.slug, label.version.number),
        },
    )


def _review_data(review: Any) -> dict[str, Any]:
    squad, template, version = review.squad, review.template, review.version
    return {
        "squad": squad.slug,
        "template": template.slug,
        "version": version.number,
        "review_request": review.pk,
        "state": review.state,
        "missing": review.missing,
        "url": reverse("reviews:request", kwargs={"squad": squad.slug, "pk": review.pk}),
        "version_url": _version_url(squad.slug, template.slug, version.number),
    }


def review_requested(*, review: Any, actor: AbstractBaseUser) -> None:
    emit(
        squad_id=review.squad_id,
        event=events.REVIEW_REQUESTED,
        data={
            **_review_data(review),
            "actor": _who(actor),
            "reviewers": [u.get_username() for u in review.reviewers.all()],
        },
    )


def review_decided(
    *, review: Any, actor: AbstractBaseUser, verdict: str, roles: list[str], state_before: str
) -> None:
    emit(
        squad_id=review.squad_id,
        event=events.REVIEW_DECIDED,
        data={
            **_review_data(review),
            "actor": _who(actor),
            "verdict": verdict,
            "roles": roles,
            "state_before": state_before,
        },
    )


def job_finished(
    *, squad: Any, kind: str, job_id: int, status: str, url: str, **details: Any
) -> None:
    """`kind`: batch, finetune, eval, ...; `status`: the job's terminal state."""
    emit(
        squad_id=squad.pk,
        event=events.JOB_FINISHED,
        data={
            "squad": squad.slug,
            "kind": kind,
            "job": job_id,
            "status": status,
            "url": url,
            **details,
        },
    )
