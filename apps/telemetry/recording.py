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

# Squad slugs never change: id -> slug, filled on first use per process.
_SQUAD_SLUGS: dict[int, str] = {}


def _squad_slug(squad_id: int) -> str:
    slug = _SQUAD_SLUGS.get(squad_id)
    if slug is None:
        from apps.squads.models import Squad

        slug = Squad.objects.filter(pk=squad_id).values_list("slug", flat=True).first() or ""
        if slug:
            _SQUAD_SLUGS[squad_id] = slug
    return slug


def generations_finished(generations: Sequence["Generation"], *, prompt: str, target: str) -> None:
    """Record generations that reached a final status (ok, invalid, failed, blocked). Call
    exactly once per generation, after its final save (outside the transaction that
    wrote it, or as that transaction's last step); `prompt` is the template slug,
    `target` the requested target's name (the one that answered wins when known)."""
    rows = [
        {
            "generation_id": g.pk,
            "squad_id": g.squad_id,
            "status": g.status,
            "source": g.source,
            "target": g.target_used or target,
            "called_model": bool(g.attempts),
            "latency_seconds": g.latency_ms / 1000,
            "input_tokens": g.input_tokens,
            "output_tokens": g.output_tokens,
            "cost": float(g.cost),
        }
        for g in generations
    ]
    _record(rows, prompt)


def _record(rows: list[dict], prompt: str) -> None:
    for row in rows:
        squad = _squad_slug(row["squad_id"])
        metrics.generation_finished(
            squad=squad,
            prompt=prompt,
            target=row["target"],
            status=row["status"],
            source=row["source"],
            called_model=row["called_model"],
            latency_seconds=row["latency_seconds"],
            input_tokens=row["input_tokens"],
            output_tokens=row["output_tokens"],
            cost=row["cost"],
        )
    if len(rows) == 1 and rows[0]["source"] != "batch":
        # Batch rows are summed up by the job's own line; one line per row would flood.
        row = rows[0]
        logger.info(
            "generation finished",
            generation_id=row["generation_id"],
            status=row["status"],
            source=row["source"],
            target_used=row["target"],
            latency_ms=round(row["latency_seconds"] * 1000),
            input_tokens=row["input_tokens"],
            output_tokens=row["output_tokens"],
            cost=row["cost"],
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
