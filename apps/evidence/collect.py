"""What a prompt version's evidence pack says, gathered from the apps that own each part.

`collect` returns plain JSON data (see EVIDENCE_SCHEMA / SCHEMA_VERSION): the version and
its hash, the diff from the previous protected version, review requests and decisions, eval
runs, the governance policy and findings, generation statistics, label history, and the
audit events about the version with a verification of the hash chain. It only reads and
checks nothing about the caller: `services.evidence_pack_build` does that first.
"""

import json
import math
from collections import Counter
from datetime import datetime
from decimal import Decimal
from typing import Any

from django.apps import apps as django_apps
from django.contrib.auth.models import AbstractBaseUser
from django.core.serializers.json import DjangoJSONEncoder
from django.db.models import Count, Max, Min, Prefetch, Q, Sum

from apps.audit import chain
from apps.audit.models import AuditEvent
from apps.audit.services import reanchored_rows
from apps.generation.models import Generation
from apps.governance.models import PolicyVersion
from apps.governance.rules import DEFAULT_RULES
from apps.governance.selectors import policy_version_current
from apps.prompts.diff import version_diff
from apps.prompts.models import Label, LabelMove, PromptVersion
from apps.prompts.services import content_hash
from apps.reviews.models import ReviewComment, ReviewDecision, ReviewRequest
from apps.reviews.policy import Vote, derive

EVIDENCE_SCHEMA = "studio.evidence"
SCHEMA_VERSION = 1
# Latency percentiles cover the generations that reached a model and came back.
LATENCY_STATUSES = (Generation.Status.OK, Generation.Status.INVALID)
COST_PLACES = Decimal("0.00000001")


def _name(user: AbstractBaseUser | None) -> str | None:
    return user.get_username() if user is not None else None


def plain(value: Any) -> Any:
    """Datetimes, decimals and the like as the JSON file will hold them."""
    return json.loads(json.dumps(value, cls=DjangoJSONEncoder, ensure_ascii=False))


# --- the version -------------------------------------------------------------------------


def _version_part(version: PromptVersion) -> dict[str, Any]:
    content = version.content()
    recomputed = content_hash(content)
    return {
        "number": version.number,
        "commit_message": version.commit_message,
        "author": _name(version.author),
        "created_at": version.created_at,
        "parent": version.parent.number if version.parent else None,
        "content": content,
        "content_hash": version.content_hash,
        "content_hash_recomputed": recomputed,
        "content_hash_ok": recomputed == version.content_hash,
        "warnings": version.warnings,
        "labels": sorted(version.labels.values_list("name", flat=True)),
    }


def previous_protected(version: PromptVersion) -> tuple[PromptVersion | None, str]:
    """The version to diff against, and why that one.

    1. The version a protected label pointed at when it was first moved onto this one
       (label history);
    2. else the version a protected label last pointed at among the earlier numbers;
    3. else the previous version number.
    """
    template = version.template
    protected = list(template.squad.protected_labels or [])
    moves = list(
        LabelMove.objects.filter(label__template=template, label__name__in=protected)
        .select_related("label", "from_version", "to_version")
        .order_by("moved_at", "pk")
    )
    onto = [m for m in moves if m.to_version_id == version.pk]
    if onto and onto[0].from_version is not None and onto[0].from_version_id != version.pk:
        first = onto[0]
        return first.from_version, (
            f"'{first.label.name}' pointed at v{first.from_version.number} before it was "
            f"moved to v{version.number} (label history)"
        )
    earlier = [m for m in moves if m.to_version.number < version.number]
    if earlier:
        last = earlier[-1]
        return last.to_version, (
            f"the last protected version before v{version.number}: '{last.label.name}' "
            f"pointed at v{last.to_version.number}"
        )
    previous = template.versions.filter(number__lt=version.number).order_by("-number").first()
    if previous is not None:
        return previous, "no protected label pointed at an earlier version: previous number"
    return None, "the first version of the prompt: nothing to compare with"


def _diff_part(version: PromptVersion) -> dict[str, Any]:
    base, basis = previous_protected(version)
    if base is None:
        return {"base": None, "basis": basis, "diff": None}
    return {
        "base": {
            "number": base.number,
            "content_hash": base.content_hash,
            "created_at": base.created_at,
        },
        "basis": basis,
        "diff": version_diff(base, version),
    }


# --- reviews -----------------------------------------------------------------------------


def _review_requests(version: PromptVersion) -> list[ReviewRequest]:
    return list(
        ReviewRequest.objects.filter(version=version)
        .select_related("opened_by", "superseded_by__version")
        .prefetch_related(
            "reviewers",
            Prefetch(
                "decisions",
                queryset=ReviewDecision.objects.select_related("reviewer").order_by(
                    "created_at", "pk"
                ),
            ),
        )
        .order_by("created_at", "pk")
    )


def _reviews_part(version: PromptVersion, requests: list[ReviewRequest]) -> list[dict[str, Any]]:
    out = []
    for review in requests:
        decisions = list(review.decisions.all())
        current = [d for d in decisions if d.is_current]
        # Which role slot each current approval filled under the request's own policy.
        counted = derive(
            policy=review.policy,
            author_id=version.author_id,
            votes=[Vote(d.reviewer_id, d.verdict, tuple(d.roles)) for d in current],
        ).counted
        out.append(
            {
                "id": review.pk,
                "state": review.state,
                "opened_by": _name(review.opened_by),
                "note": review.note,
                "reviewers_named": sorted(u.get_username() for u in review.reviewers.all()),
                "policy": review.policy,
                "missing": review.missing,
                "created_at": review.created_at,
                "updated_at": review.updated_at,
                "closed_at": review.closed_at,
                "superseded_by_version": (
                    review.superseded_by.version.number if review.superseded_by else None
                ),
                "decisions": [
                    {
                        "reviewer": _name(d.reviewer),
                        "roles": d.roles,
                        "counted_as": counted.get(d.reviewer_id) if d.is_current else None,
                        "verdict": d.verdict,
                        "comment": d.comment,
                        "decided_at": d.created_at,
                        "is_current": d.is_current,
                    }
                    for d in decisions
                ],
            }
        )
    return out


# --- evals -------------------------------------------------------------------------------


def _evals_part(version: PromptVersion, actor: AbstractBaseUser) -> dict[str, Any]:
    if not django_apps.is_installed("apps.evals"):
        return {"available": False, "runs": []}
    from apps.evals.models import EvalRun
    from apps.evals.selectors import compare_runs

    runs = list(
        EvalRun.objects.filter(version=version)
        .select_related("target", "created_by")
        .defer("cases")
        .order_by("created_at", "pk")
    )
    out = []
    for run in runs:
        entry: dict[str, Any] = {
            "id": run.pk,
            "target": run.target.name,
            "status": run.status,
            "tags": run.tags,
            "total": run.total,
            "done": run.done,
            "passed": run.passed,
            "failed": run.failed_count,
            "pass_rate": run.pass_rate,
            "error": run.error,
            "created_by": _name(run.created_by),
            "created_at": run.created_at,
            "started_at": run.started_at,
            "finished_at": run.finished_at,
            "compared_with": None,
        }
        # The previous finished run of this prompt on the same target (any version).
        base = (
            EvalRun.objects.filter(
                version__template_id=version.template_id,
                target_id=run.target_id,
                status=EvalRun.Status.SUCCEEDED,
                created_at__lt=run.created_at,
            )
            .exclude(pk=run.pk)
            .select_related("version")
            .order_by("-created_at", "-pk")
            .first()
        )
        if base is not None and run.status == EvalRun.Status.SUCCEEDED:
            comparison = compare_runs(
                user=actor, squad=version.template.squad, base_id=base.pk, head_id=run.pk
            )
            entry["compared_with"] = {
                "run": base.pk,
                "version": base.version.number,
                "pass_rate": base.pass_rate,
                "pass_rate_delta": comparison.pass_rate_delta,
                "regressions": [
                    {"case": row["name"], "failing": row["failing"]}
                    for row in comparison.regressions
                ],
                "fixes": [row["name"] for row in comparison.fixes],
            }
        out.append(entry)
    return {"available": True, "runs": out}


# --- governance and generations ----------------------------------------------------------


def _policy_out(policy: PolicyVersion | None) -> dict[str, Any]:
    if policy is None:
        return {"number": None, "rules": DEFAULT_RULES, "note": "default rules (no version)"}
    return {
        "number": policy.number,
        "rules": policy.rules,
        "note": policy.note,
        "created_by": _name(policy.created_by),
        "created_at": policy.created_at,
    }


def _percentile(values: list[int], p: float) -> int | None:
    """Nearest-rank percentile of sorted values."""
    if not values:
        return None
    return values[max(math.ceil(p * len(values)) - 1, 0)]


def _generations_parts(version: PromptVersion) -> tuple[dict[str, Any], dict[str, Any]]:
    """(generation statistics, governance part) over the version's generations."""
    generations = Generation.objects.filter(prompt_version=version).order_by()
    totals = generations.aggregate(
        count=Count("pk"),
        input_tokens=Sum("input_tokens"),
        output_tokens=Sum("output_tokens"),
        cost=Sum("cost"),
        first=Min("created_at"),
        last=Max("created_at"),
    )
    by_status = dict(
        generations.values_list("status").annotate(n=Count("pk")).values_list("status", "n")
    )
    by_source = dict(
        generations.values_list("source").annotate(n=Count("pk")).values_list("source", "n")
    )
    latencies = sorted(
        generations.filter(status__in=LATENCY_STATUSES).values_list("latency_ms", flat=True)
    )
    stats = {
        "count": totals["count"],
        "by_status": dict(sorted(by_status.items())),
        "by_source": dict(sorted(by_source.items())),
        "input_tokens": totals["input_tokens"] or 0,
        "output_tokens": totals["output_tokens"] or 0,
        # SQLite sums decimals as floats: back to the column's 8 places.
        # Fixed-point text: str() of a zero Decimal with 8 places is "0E-8".
        "cost": format(Decimal(str(totals["cost"] or 0)).quantize(COST_PLACES), "f"),
        "latency_ms": {
            "over": "ok and invalid generations (nearest-rank percentiles)",
            "n": len(latencies),
            "p50": _percentile(latencies, 0.50),
            "p95": _percentile(latencies, 0.95),
        },
        "first_at": totals["first"],
        "last_at": totals["last"],
    }

    findings: Counter[tuple[str, str, str, str]] = Counter()
    with_findings = blocked = 0
    policy_ids: Counter[int | None] = Counter()
    rows = generations.values_list("status", "findings", "policy_version_id")
    for status, found, policy_id in rows.iterator(chunk_size=2000):
        policy_ids[policy_id] += 1
        blocked += status == Generation.Status.BLOCKED
        if found:
            with_findings += 1
            for f in found:
                findings[(f["stage"], f["rule"], f["type"], f["action"])] += 1
    used = PolicyVersion.objects.filter(pk__in=[i for i in policy_ids if i is not None])
    squad = version.template.squad
    governance = {
        "policy_in_force": _policy_out(policy_version_current(squad_id=squad.pk)),
        "policies_of_generations": [
            {**_policy_out(p), "generations": policy_ids[p.pk]}
            for p in used.select_related("created_by").order_by("number")
        ]
        + (
            [{**_policy_out(None), "generations": policy_ids[None]}] if policy_ids.get(None) else []
        ),
        "findings": {
            "total": sum(findings.values()),
            "generations_with_findings": with_findings,
            "blocked_generations": blocked,
            "by_kind": [
                {"stage": s, "rule": r, "type": t, "action": a, "count": n}
                for (s, r, t, a), n in sorted(findings.items())
            ],
        },
    }
    return stats, governance


# --- labels ------------------------------------------------------------------------------


def _labels_part(version: PromptVersion) -> list[dict[str, Any]]:
    protected = set(version.template.squad.protected_labels or [])
    moves = (
        LabelMove.objects.filter(label__template_id=version.template_id)
        .filter(Q(from_version=version) | Q(to_version=version))
        .select_related("label", "from_version", "to_version", "actor")
        .order_by("moved_at", "pk")
    )
    return [
        {
            "label": m.label.name,
            "protected": m.label.name in protected,
            "from_version": m.from_version.number if m.from_version else None,
            "to_version": m.to_version.number,
            "direction": "onto" if m.to_version_id == version.pk else "off",
            "actor": _name(m.actor),
            "note": m.note,
            "moved_at": m.moved_at,
        }
        for m in moves
    ]


# --- audit -------------------------------------------------------------------------------


def _label_of(model: type) -> str:
    return model._meta.label_lower


def _audit_rows(version: PromptVersion, requests: list[ReviewRequest]) -> list[dict[str, Any]]:
    """Chain rows of the events about the version: the version itself, its review requests
    and comments, the moves of a label onto or off it, and its eval runs."""
    template = version.template
    targets = Q(target_type=_label_of(PromptVersion), target_id=str(version.pk))
    targets |= Q(target_type=_label_of(ReviewRequest), target_id__in=[str(r.pk) for r in requests])
    comment_ids = ReviewComment.objects.filter(version=version).values_list("pk", flat=True)
    targets |= Q(target_type=_label_of(ReviewComment), target_id__in=[str(c) for c in comment_ids])
    label_ids = [
        str(pk) for pk in Label.objects.filter(template=template).values_list("pk", flat=True)
    ]
    targets |= Q(target_type=_label_of(Label), target_id__in=label_ids)
    if django_apps.is_installed("apps.evals"):
        from apps.evals.models import EvalRun

        run_ids = EvalRun.objects.filter(version=version).values_list("pk", flat=True)
        targets |= Q(target_type=_label_of(EvalRun), target_id__in=[str(r) for r in run_ids])
    rows = (
        AuditEvent.objects.filter(squad_id=template.squad_id)
        .filter(targets)
        .order_by("sequence")
        .values_list(*chain.CHAIN_FIELDS)
    )
    out = []
    for row in rows:
        record = dict(zip(chain.CHAIN_FIELDS, row, strict=True))
        if record["target_type"] == _label_of(Label):
            data = record["data"] or {}
            # A label event is about this version when the label moved onto or off it.
            if data.get("template") != template.slug or version.number not in (
                data.get("to"),
                data.get("from"),
            ):
                continue
        out.append(record)
    return out


def _audit_part(version: PromptVersion, requests: list[ReviewRequest]) -> dict[str, Any]:
    records = _audit_rows(version, requests)
    squad_id = version.template.squad_id
    # Each included event: its own hash recomputed, and its predecessor's hash equal to
    # its prev_hash (the predecessor may belong to another squad: the chain is global).
    predecessors = dict(
        AuditEvent.objects.filter(sequence__in=[r["sequence"] - 1 for r in records]).values_list(
            "sequence", "hash"
        )
    )
    # Rows a bug broke and staff re-anchored (signed) count as verified, as in audit_verify.
    reanchored = reanchored_rows()
    accepted = {(r.sequence, r.stored_hash, r.content_hash) for r in reanchored}
    events = []
    for record in records:
        sequence = record["sequence"]
        content_hash = chain.recompute(record)
        hash_ok = content_hash == record["hash"] or (
            (sequence, record["hash"], content_hash) in accepted
        )
        if sequence == 1:
            link_ok = record["prev_hash"] == chain.GENESIS_HASH
        else:
            link_ok = predecessors.get(sequence - 1) == record["prev_hash"]
        events.append(
            {
                "sequence": sequence,
                "created_at": record["created_at"],
                "actor": record["actor_label"],
                "action": record["action"],
                "target_type": record["target_type"],
                "target_id": record["target_id"],
                "data": record["data"],
                "ip": record["ip"],
                "prev_hash": record["prev_hash"],
                "hash": record["hash"],
                "hash_ok": hash_ok,
                "link_ok": link_ok,
            }
        )
    # The whole chain from the first event through the squad's latest one: every event of
    # the squad (those above included) sits in that stretch.
    squad_last = AuditEvent.objects.filter(squad_id=squad_id).aggregate(last=Max("sequence"))
    upto = max([squad_last["last"] or 0, *(r["sequence"] for r in records)])
    report = chain.verify(
        chain.iter_chain_rows(AuditEvent.objects.filter(sequence__lte=upto)),
        reanchored=reanchored,
    )
    events_ok = all(e["hash_ok"] and e["link_ok"] for e in events)
    first_bad_event = next(
        (e["sequence"] for e in events if not (e["hash_ok"] and e["link_ok"])), None
    )
    candidates = [s for s in (report.first_broken_sequence, first_bad_event) if s is not None]
    if not report.intact:
        reason = report.reason
    elif not events_ok:
        reason = f"event {first_bad_event} listed here does not verify"
    else:
        reason = report.reason
    return {
        "events": events,
        "verification": {
            "status": "ok" if report.intact and events_ok else "broken",
            "method": (
                "sha256 hash chain (apps.audit.chain.verify) walked from sequence 1 through "
                "the squad's latest event; each event listed here re-hashed and linked to "
                "its predecessor"
            ),
            "from_sequence": 1,
            "to_sequence": upto,
            "events_checked": report.events_checked,
            "squad_events_in_range": AuditEvent.objects.filter(
                squad_id=squad_id, sequence__lte=upto
            ).count(),
            "first_broken_sequence": min(candidates) if candidates else None,
            "reason": reason,
            "listed_events_ok": events_ok,
        },
    }


# --- the whole pack ----------------------------------------------------------------------


def collect(*, version: PromptVersion, actor: AbstractBaseUser, at: datetime) -> dict[str, Any]:
    """The evidence document of `version` (the caller checked the permission)."""
    template = version.template
    squad = template.squad
    requests = _review_requests(version)
    generation_stats, governance = _generations_parts(version)
    document = {
        "schema": EVIDENCE_SCHEMA,
        "schema_version": SCHEMA_VERSION,
        "generated_at": at,
        "generated_by": actor.get_username(),
        "squad": {"slug": squad.slug, "name": squad.name},
        "prompt": {
            "slug": template.slug,
            "description": template.description,
            "protected_labels": list(squad.protected_labels or []),
        },
        "version": _version_part(version),
        "diff": _diff_part(version),
        "reviews": _reviews_part(version, requests),
        "evals": _evals_part(version, actor),
        "governance": governance,
        "generations": generation_stats,
        "labels": _labels_part(version),
        "audit": _audit_part(version, requests),
    }
    return plain(document)
