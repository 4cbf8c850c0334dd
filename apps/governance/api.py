from typing import Any

from django.http import HttpRequest
from ninja import Router

from apps.governance import provenance, selectors, services
from apps.governance.models import PolicyVersion
from apps.governance.rules import DEFAULT_RULES
from apps.governance.schemas import (
    GovernancePolicyIn,
    GovernancePolicyOut,
    PolicyTestIn,
    PolicyTestOut,
    ProvenanceOut,
    VerifyIn,
    VerifyOut,
)
from apps.squads.selectors import squad_get_for_user

router = Router(tags=["governance"])


def _policy_out(policy: PolicyVersion | None) -> dict[str, Any]:
    if policy is None:
        return {
            "version": None,
            "rules": DEFAULT_RULES,
            "note": "",
            "created_by": None,
            "created_at": None,
        }
    return {
        "version": policy.number,
        "rules": policy.rules,
        "note": policy.note,
        "created_by": policy.created_by.username if policy.created_by else None,
        "created_at": policy.created_at,
    }


@router.get("/squads/{squad}/governance-policy", response=GovernancePolicyOut)
def policy_detail(request: HttpRequest, squad: str) -> dict:
    squad_obj = squad_get_for_user(user=request.auth, slug=squad)
    return _policy_out(selectors.policy_get_for_user(user=request.auth, squad=squad_obj))


@router.put("/squads/{squad}/governance-policy", response=GovernancePolicyOut)
def policy_update(request: HttpRequest, squad: str, payload: GovernancePolicyIn) -> dict:
    """Save the rules as the next policy version (owners and compliance leads)."""
    squad_obj = squad_get_for_user(user=request.auth, slug=squad)
    policy = services.policy_update(
        actor=request.auth, squad=squad_obj, rules=payload.rules, note=payload.note, request=request
    )
    return _policy_out(policy)


@router.get("/squads/{squad}/governance-policy/versions", response=list[GovernancePolicyOut])
def policy_versions(request: HttpRequest, squad: str) -> list:
    squad_obj = squad_get_for_user(user=request.auth, slug=squad)
    return [
        _policy_out(p)
        for p in selectors.policy_versions_for_user(user=request.auth, squad=squad_obj)
    ]


@router.post("/squads/{squad}/governance-policy/test", response=PolicyTestOut)
def policy_test(request: HttpRequest, squad: str, payload: PolicyTestIn) -> dict:
    """The test bench: what the current policy finds in a text and what it redacts."""
    squad_obj = squad_get_for_user(user=request.auth, slug=squad)
    result = selectors.policy_test_for_user(user=request.auth, squad=squad_obj, text=payload.text)
    return {
        "policy_version": result.policy.number if result.policy else None,
        "blocked": result.blocked,
        "findings": result.findings,
        "redacted": result.redacted,
    }


@router.get("/generations/{generation_id}/provenance", response=ProvenanceOut)
def generation_provenance(request: HttpRequest, generation_id: int) -> dict:
    g = selectors.generation_provenance_get_for_user(user=request.auth, generation_id=generation_id)
    return {
        "generation": g.pk,
        "manifest": g.provenance,
        "signature": g.provenance_signature,
        "key_id": g.provenance_key_id,
    }


@router.post("/provenance/verify", response=VerifyOut)
def provenance_verify(request: HttpRequest, payload: VerifyIn) -> dict:
    """Whether a manifest was signed by this server and, given the output, matches it."""
    verdict = provenance.verify(
        manifest=payload.manifest,
        signature=payload.signature,
        key_id=payload.key_id,
        output=payload.output,
    )
    return {"valid": verdict.valid, "reasons": verdict.reasons}
