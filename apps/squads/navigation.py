"""The squad navigation: every area of a squad that the member's roles may use, with live
counts (reviews waiting for them, jobs queued or running, open drift alerts).

One list names the areas and the permission each needs, so a page a role may use is
always reachable from the squad page and a role never sees a link that answers 403.
The counts cost at most one query per page: review counts come from the header's
(apps.reviews.navigation.NavReviews), open alerts from the banner's cache
(apps.feedback.selectors.open_alerts_for_squads), and the jobs from one UNION query
cached per squad for JOB_COUNTS_TTL seconds.
"""

from dataclasses import dataclass

from django.contrib.auth.models import AbstractBaseUser, AnonymousUser
from django.core.cache import cache
from django.db.models import Count, Value
from django.urls import reverse

from apps.squads.access import squad_permissions
from apps.squads.models import Squad
from apps.squads.permissions import (
    MANAGE_WEBHOOKS,
    VIEW_AUDIT,
    VIEW_GATEWAY,
    VIEW_SQUAD,
    SquadPermission,
)

User = AbstractBaseUser | AnonymousUser
JOB_COUNTS_TTL = 5
JOB_COUNTS_KEY = "nav:jobs:{squad_id}"


@dataclass(frozen=True)
class Area:
    label: str
    url_name: str
    permission: SquadPermission = VIEW_SQUAD
    count: str = ""  # key of NavArea.count's source: reviews, batches, finetune, evals, alerts
    anchor: str = ""
    group: str = "Work"


AREAS: tuple[Area, ...] = (
    Area("Overview", "squads:detail"),
    Area("Prompts", "prompts:list"),
    Area("Reviews", "reviews:requests", count="reviews"),
    Area("Review queues", "reviews:queues"),
    Area("Generations", "generation:generation_list"),
    Area("Batch jobs", "generation:batch_list", count="batches"),
    Area("Model targets", "generation:target_list", group="Models"),
    Area("Datasets", "finetune:list", group="Models"),
    Area("Fine-tuning", "finetune_jobs:list", count="finetune", group="Models"),
    Area("Adapters", "finetune_jobs:list", anchor="adapters-title", group="Models"),
    Area("Evals", "evals:index", count="evals", group="Quality"),
    Area("Alerts", "feedback:alerts", count="alerts", group="Quality"),
    Area("Governance", "governance:policy", group="Quality"),
    Area("Approval policy", "reviews:policy", group="Quality"),
    Area("Members", "squads:members", group="Squad"),
    Area("Audit log", "audit:squad", VIEW_AUDIT, group="Squad"),
    Area("Webhooks", "webhooks:list", MANAGE_WEBHOOKS, group="Squad"),
    Area("Gateway", "gateway:page", VIEW_GATEWAY, group="Squad"),
)


@dataclass(frozen=True)
class NavArea:
    label: str
    url: str
    count: int
    count_title: str
    current: bool
    group: str


def _job_counts(squad_id: int) -> dict[str, int]:
    """Queued or running jobs of the squad by kind, in one query (cached briefly)."""
    key = JOB_COUNTS_KEY.format(squad_id=squad_id)
    counts = cache.get(key)
    if counts is not None:
        return counts
    from apps.evals.models import EvalRun
    from apps.finetune.models import AdapterComparison, FineTuneJob
    from apps.generation.models import BatchJob

    kinds = (
        ("batches", BatchJob),
        ("finetune", FineTuneJob),
        ("finetune", AdapterComparison),
        ("evals", EvalRun),
    )
    parts = [
        model.objects.filter(squad_id=squad_id, status__in=("queued", "running"))
        .order_by()
        .annotate(kind=Value(kind))
        .values("kind")
        .annotate(n=Count("pk"))
        .values_list("kind", "n")
        for kind, model in kinds
    ]
    counts = {"batches": 0, "finetune": 0, "evals": 0}
    for kind, n in parts[0].union(*parts[1:], all=True):
        counts[kind] += n
    cache.set(key, counts, JOB_COUNTS_TTL)
    return counts


def squad_navigation(
    *, user: User, squad: Squad, path: str, reviews_by_squad: dict[int, int] | None = None
) -> list[NavArea]:
    """The areas of `squad` the user may use, in order, the current one (by `path`)
    marked; empty when the user may not see the squad. `reviews_by_squad` is the header's
    squad id -> requests waiting for the user."""
    perms = squad_permissions(user, squad.pk)
    if VIEW_SQUAD.codename not in perms:
        return []
    allowed = [
        a
        for a in AREAS
        if a.permission.codename in perms or (a.permission is VIEW_AUDIT and user.is_staff)
    ]
    jobs = _job_counts(squad.pk)
    from apps.feedback.selectors import open_alerts_for_squads

    counts = {
        **jobs,
        "alerts": len(open_alerts_for_squads([squad])),
        "reviews": (reviews_by_squad or {}).get(squad.pk, 0),
    }
    titles = {
        "reviews": "review{s} waiting for you",
        "batches": "batch job{s} queued or running",
        "finetune": "fine-tune job{s} or comparison{s} queued or running",
        "evals": "eval run{s} queued or running",
        "alerts": "open drift alert{s}",
    }
    urls = [reverse(a.url_name, args=[squad.slug]) for a in allowed]
    # The current area is the one whose address is the longest prefix of the path; the
    # squad's own page only when it is that page.
    current = max(
        (
            (len(url), i)
            for i, url in enumerate(urls)
            if not allowed[i].anchor
            and (path == url if allowed[i].url_name == "squads:detail" else path.startswith(url))
        ),
        default=(0, -1),
    )[1]
    items = []
    for i, (area, url) in enumerate(zip(allowed, urls, strict=True)):
        n = counts.get(area.count, 0) if area.count else 0
        items.append(
            NavArea(
                label=area.label,
                url=f"{url}#{area.anchor}" if area.anchor else url,
                count=n,
                count_title=f"{n} {titles[area.count].format(s='' if n == 1 else 's')}"
                if n
                else "",
                current=i == current,
                group=area.group,
            )
        )
    return items
