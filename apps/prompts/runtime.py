"""The hot path: what production apps call on every request.

A fetch resolves (squad slug, prompt slug, label or version) to a serialised
JSON body and its ETag. Bodies are cached (the Django cache: Redis in
production, a file cache on the embedded default) under the squad's id;
version bodies never change, label bodies are dropped when the label moves
(`forget_label`, at once and again at commit). In front of the shared cache, each
process keeps bodies and permission sets for STUDIO_HOT_MEMO_SECONDS (apps/core/memo.py),
so a label move made through another process reaches this one within a second.
Squad ids are cached by slug (slugs never change). With a warm cache a fetch runs
no query for the prompt; authentication and permissions have caches of their own
(squads.services, squads.access).
"""

import hashlib
import json
from dataclasses import dataclass
from typing import Any, Protocol

from django.contrib.auth.models import AbstractBaseUser, AnonymousUser
from django.core.cache import cache
from django.core.serializers.json import DjangoJSONEncoder
from django.db import transaction

from apps.core.exceptions import NotFound, ValidationFailed
from apps.core.memo import HOT
from apps.prompts.models import Label, PromptTemplate, PromptVersion
from apps.squads.access import (
    permission_cache_key,
    prime_permissions,
    require_squad_permission,
)
from apps.squads.models import Squad
from apps.squads.permissions import VIEW_SQUAD
from apps.squads.selectors import SQUAD_IDS

User = AbstractBaseUser | AnonymousUser
LABEL_TTL = 300
VERSION_TTL = 24 * 3600
SQUAD_TTL = 24 * 3600


@dataclass(frozen=True)
class Fetched:
    etag: str
    body: bytes

    def payload(self) -> dict[str, Any]:
        return json.loads(self.body)


def _squad_key(squad_slug: str) -> str:
    return f"squad:id:{squad_slug}"


def _payload_key(
    squad_id: int | str, template_slug: str, label: str | None, version: int | None
) -> str:
    ref = f"label:{label}" if label is not None else f"v:{version}"
    return f"prompt:{squad_id}:{template_slug}:{ref}"


def forget_label(*, squad_id: int, template_slug: str, label: str) -> None:
    """Drop a label's cached body: now, and at commit (a reader may have re-cached it).
    Other web processes drop their memo of it within STUDIO_HOT_MEMO_SECONDS."""
    key = _payload_key(squad_id, template_slug, label, None)
    HOT.pop(key)
    cache.delete(key)
    transaction.on_commit(lambda: (HOT.pop(key), cache.delete(key)))


def payload_for(version: PromptVersion, *, squad_slug: str, label: str | None) -> dict[str, Any]:
    return {
        "squad": squad_slug,
        "prompt": version.template.slug,
        "label": label,
        "version": version.number,
        "content_hash": version.content_hash,
        "messages": version.messages,
        "input_schema": version.input_schema,
        "output_schema": version.output_schema,
        "output_format": version.output_format,
        "model": version.model_settings,
        "fallback_target": version.fallback_target or None,
        "created_at": version.created_at,
        "commit_message": version.commit_message,
    }


def _serialise(payload: dict[str, Any]) -> Fetched:
    body = json.dumps(payload, cls=DjangoJSONEncoder, ensure_ascii=False, separators=(",", ":"))
    data = body.encode()
    return Fetched(etag=f'"{hashlib.sha256(data).hexdigest()[:32]}"', body=data)


def _not_found(
    user: User, squad_slug: str, template_slug: str, label: str | None, version: int | None
) -> NotFound:
    """Say precisely what is missing — but only to someone who may see the squad."""
    squad = Squad.objects.filter(slug=squad_slug).first()
    if squad is None:
        return NotFound(f"Squad '{squad_slug}' not found.")
    require_squad_permission(user, squad, VIEW_SQUAD)
    template = PromptTemplate.objects.filter(squad=squad, slug=template_slug).first()
    if template is None:
        return NotFound(f"Prompt '{template_slug}' not found in squad '{squad_slug}'.")
    if label is not None:
        return NotFound(f"Prompt '{template_slug}' has no label '{label}'.", field="label")
    return NotFound(f"Prompt '{template_slug}' has no version {version}.", field="version")


class FetchGrant(Protocol):
    """A service key's grant (apps.gateway.services.KeyGrant) as the fetch checks it."""

    def may_fetch(self, squad_id: int, slug: str) -> bool: ...


def _require_grant(grant: FetchGrant, squad_id: int, template_slug: str) -> None:
    if not grant.may_fetch(squad_id, template_slug):
        raise NotFound(f"Prompt '{template_slug}' not found.")


def fetch(
    *,
    user: User | None,
    squad_slug: str,
    template_slug: str,
    label: str | None = None,
    version: int | None = None,
    grant: FetchGrant | None = None,
) -> Fetched:
    """The body of a prompt by label or version number; 404 for missing and forbidden alike.
    With a service key's `grant` instead of a user: the key's squad, fetch scope and
    prompt list decide (anything else is the same 404)."""
    if (label is None) == (version is None):
        raise ValidationFailed("Ask for exactly one of 'label' or 'version'.", field="label")
    if grant is not None:
        return _fetch_with_grant(grant, squad_slug, template_slug, label, version)
    assert user is not None
    squad_key = _squad_key(squad_slug)
    # Squad slugs never change, so their ids can live in process memory.
    squad_id = SQUAD_IDS.get(squad_slug) or cache.get(squad_key)
    if squad_id is not None:
        SQUAD_IDS[squad_slug] = squad_id
        key = _payload_key(squad_id, template_slug, label, version)
        perm_key = permission_cache_key(user.pk, squad_id) if user.is_authenticated else None
        cached, perms = HOT.get(key), HOT.get(perm_key) if perm_key else None
        wanted = [k for k, v in ((key, cached), (perm_key, perms)) if k and v is None]
        if wanted:  # one round trip for whichever of the body and permission set is missing
            hit = cache.get_many(wanted)
            if cached is None and (cached := hit.get(key)) is not None:
                HOT.set(key, cached)
            if perm_key and perms is None and (perms := hit.get(perm_key)) is not None:
                HOT.set(perm_key, perms)
        if cached is not None:
            if perms is not None:
                prime_permissions(user, squad_id, perms)
            require_squad_permission(user, Squad(pk=squad_id, slug=squad_slug), VIEW_SQUAD)
            return Fetched(*cached)
    found = _find_version(squad_slug, template_slug, label, version)
    if found is None:
        raise _not_found(user, squad_slug, template_slug, label, version)
    squad = found.template.squad
    require_squad_permission(user, squad, VIEW_SQUAD)
    fetched = _serialise(payload_for(found, squad_slug=squad_slug, label=label))
    key = _payload_key(squad.pk, template_slug, label, version)
    cache.set_many({squad_key: squad.pk}, SQUAD_TTL)
    SQUAD_IDS[squad_slug] = squad.pk
    entry = (fetched.etag, fetched.body)
    cache.set(key, entry, LABEL_TTL if label is not None else VERSION_TTL)
    HOT.set(key, entry)
    return fetched


def _find_version(
    squad_slug: str, template_slug: str, label: str | None, version: int | None
) -> PromptVersion | None:
    """One query: the version a label points at (or by number), with its template and
    squad."""
    if label is not None:
        row = (
            Label.objects.select_related("version__template__squad")
            .filter(template__squad__slug=squad_slug, template__slug=template_slug, name=label)
            .first()
        )
        return row.version if row else None
    return (
        PromptVersion.objects.select_related("template__squad")
        .filter(template__squad__slug=squad_slug, template__slug=template_slug, number=version)
        .first()
    )


def _fetch_with_grant(
    grant: FetchGrant,
    squad_slug: str,
    template_slug: str,
    label: str | None,
    version: int | None,
) -> Fetched:
    squad_id = SQUAD_IDS.get(squad_slug) or cache.get(_squad_key(squad_slug))
    if squad_id is not None:
        _require_grant(grant, squad_id, template_slug)
        key = _payload_key(squad_id, template_slug, label, version)
        cached = HOT.get(key) or cache.get(key)
        if cached is not None:
            HOT.set(key, cached)
            return Fetched(*cached)
    found = _find_version(squad_slug, template_slug, label, version)
    if found is None:
        raise NotFound(f"Prompt '{template_slug}' not found.")
    squad = found.template.squad
    _require_grant(grant, squad.pk, template_slug)
    fetched = _serialise(payload_for(found, squad_slug=squad_slug, label=label))
    cache.set(_squad_key(squad_slug), squad.pk, SQUAD_TTL)
    SQUAD_IDS[squad_slug] = squad.pk
    entry = (fetched.etag, fetched.body)
    key = _payload_key(squad.pk, template_slug, label, version)
    cache.set(key, entry, LABEL_TTL if label is not None else VERSION_TTL)
    HOT.set(key, entry)
    return fetched


def etag_matches(if_none_match: str | None, etag: str) -> bool:
    if not if_none_match:
        return False
    if if_none_match.strip() == "*":
        return True
    candidates = [c.strip().removeprefix("W/") for c in if_none_match.split(",")]
    return etag in candidates
