"""Where the domain reports to telemetry: finished generations, once each, and the
prompt/version/target log bindings.

Called from the shared generation path (apps.generation.services) in the web process
or the worker, once the rows are saved for good: batch rows after their chunk's
transaction (only the rows this runner wrote, not those a concurrent runner did).
"""

from collections.abc import Sequence
from typing import TYPE_CHECKING

import structlog

from apps.telemetry import metrics

if TYPE_CHECKING:
    from apps.generation.models import Generation, ModelTarget
    from apps.prompts.models import PromptVersion

logger = structlog.get_logger("studio.generation")


def _squad_slugs(squad_ids: set[int]) -> dict[int, str]:
    """One small query per call (a generation, a batch chunk): not cached, because SQLite
    may give a deleted squad's id to the next one."""
    from apps.squads.models import Squad

    return dict(Squad.objects.filter(pk__in=squad_ids).values_list("pk", "slug"))


def generations_finished(generations: Sequence["Generation"], *, prompt: str, target: str) -> None:
    """Record generations that reached a final status (ok, invalid, failed, blocked). Call
    exactly once per generation, after its final save (outside the transaction that
    wrote it, or as that transaction's last step); `prompt` is the template slug,
    `target` the requested target's name (the one that answered wins when known)."""
    if not generations:
        return
    slugs = _squad_slugs({g.squad_id for g in generations})
    for g in generations:
        metrics.generation_finished(
            squad=slugs.get(g.squad_id, ""),
            prompt=prompt,
            target=g.target_used or target,
            status=g.status,
            source=g.source,
            called_model=bool(g.attempts),
            latency_seconds=g.latency_ms / 1000,
            input_tokens=g.input_tokens,
            output_tokens=g.output_tokens,
            cost=float(g.cost),
        )
    if len(generations) == 1 and generations[0].source != "batch":
        # Batch rows are summed up by the job's own line; one line per row would flood.
        g = generations[0]
        logger.info(
            "generation finished",
            generation_id=g.pk,
            status=g.status,
            source=g.source,
            target_used=g.target_used or target,
            latency_ms=g.latency_ms,
            input_tokens=g.input_tokens,
            output_tokens=g.output_tokens,
            cost=float(g.cost),
        )


def bind_generation(version: "PromptVersion", target: "ModelTarget", **ids: int) -> None:
    """Bind prompt (template slug), version and target to the log lines that follow, in
    the request or task at hand."""
    structlog.contextvars.bind_contextvars(
        prompt=version.template.slug, version=version.number, target=target.name, **ids
    )


def bind_prompt(slug: str, *, label: str | None, version: int | None) -> None:
    """The runtime fetch: the prompt and the label or version asked for."""
    asked = {"label": label} if label is not None else {}
    if version is not None:
        asked["version"] = version
    structlog.contextvars.bind_contextvars(prompt=slug, **asked)
