"""Part A helpers: members who review, versions, and review requests opened and approved
through the services."""

from apps.prompts import services as prompts
from apps.prompts.models import PromptTemplate, PromptVersion
from apps.reviews.models import ReviewRequest
from apps.reviews.services import approvals as services
from apps.squads import services as squads
from apps.squads.models import Squad
from tests.factories import UserFactory
from tests.prompts.factories import make_prompt

EXTRA_REVIEWERS = {
    "dual": ["sme", "compliance"],
    "sme2": ["sme"],
    "comp2": ["compliance"],
    "engineer2": ["prompt_engineer"],
}


def add_reviewers(squad: Squad) -> Squad:
    """Add dual (SME and compliance), sme2, comp2 and engineer2 to the `squad` fixture's
    squad (owner, engineer, sme, compliance, viewer)."""
    owner = UserFactory(username="owner")
    for username, roles in EXTRA_REVIEWERS.items():
        squads.membership_add(
            actor=owner, squad=squad, user=UserFactory(username=username), roles=roles
        )
    return squad


def engineer_prompt(squad: Squad, slug: str = "support") -> PromptTemplate:
    """A prompt whose version 1 was written by 'engineer'."""
    return make_prompt(squad, UserFactory(username="engineer"), slug=slug)


def new_version(template: PromptTemplate, n: int, *, by: str = "engineer") -> PromptVersion:
    return prompts.prompt_version_create(
        actor=UserFactory(username=by),
        template=template,
        messages=[
            {"role": "system", "content": "You answer briefly."},
            {"role": "user", "content": f"Version {n}:\n{{{{ question }}}}"},
        ],
        input_schema={
            "type": "object",
            "properties": {"question": {"type": "string"}},
            "required": ["question"],
        },
        commit_message=f"v{n}",
    )


def open_review(version: PromptVersion, *, by: str | None = None, **kwargs) -> ReviewRequest:
    """Open a request on `version` as `by` (default: the version's author)."""
    opener = UserFactory(username=by) if by else version.author
    return services.review_request_open(actor=opener, version=version, **kwargs)


def approve(
    version: PromptVersion,
    *,
    by: tuple[str, ...] = ("sme", "compliance"),
    opener: str | None = None,
) -> ReviewRequest:
    """Open a request on `version` (unless it has an open or approved one) and have the
    members named in `by` approve it, so that a protected label may point at it under the
    default policy ({"sme": 1, "compliance": 1})."""
    review = ReviewRequest.objects.filter(
        version=version, state__in=[ReviewRequest.State.OPEN, ReviewRequest.State.APPROVED]
    ).first() or open_review(version, by=opener)
    for username in by:
        review = services.review_decide(
            actor=UserFactory(username=username), review=review, verdict="approve"
        )
    assert review.state == ReviewRequest.State.APPROVED, review.missing
    return review
