from typing import Any

from django.http import HttpRequest, HttpResponse
from ninja import Query, Router, Schema, Status

from apps.prompts import runtime, selectors, services
from apps.prompts.contracts import render_messages
from apps.prompts.diff import version_diff
from apps.prompts.models import Label, PromptTemplate, PromptVersion
from apps.prompts.schemas import (
    LabelMoveIn,
    LabelOut,
    PromptDiffOut,
    RenderIn,
    RenderOut,
    TemplateCreateIn,
    TemplateOut,
    TemplateUpdateIn,
    VersionContentIn,
    VersionCreateIn,
    VersionOut,
    VersionSummaryOut,
)
from apps.squads.selectors import squad_get_for_user

router = Router(tags=["prompts"])
DEFAULT_LABEL = "production"


class FetchQuery(Schema):
    label: str | None = None
    version: int | None = None


class PromptListQuery(Schema):
    q: str | None = None
    tag: str | None = None
    label: str | None = None
    author: str | None = None


class PromptDiffQuery(Schema):
    from_version: int
    to_version: int


def template_out(template: PromptTemplate) -> dict[str, Any]:
    return {
        "slug": template.slug,
        "description": template.description,
        "tags": template.tags,
        "created_at": template.created_at,
        "latest_version": template.latest_version.number if template.latest_version else None,
        "labels": [{"name": lb.name, "version": lb.version.number} for lb in template.labels.all()],
    }


def version_summary(version: PromptVersion) -> dict[str, Any]:
    return {
        "number": version.number,
        "commit_message": version.commit_message,
        "author": version.author.get_username() if version.author else None,
        "created_at": version.created_at,
        "content_hash": version.content_hash,
        "parent": version.parent.number if version.parent else None,
        "labels": [lb.name for lb in version.labels.all()],
    }


def version_out(version: PromptVersion) -> dict[str, Any]:
    return {
        **version_summary(version),
        "messages": version.messages,
        "input_schema": version.input_schema,
        "output_schema": version.output_schema,
        "output_format": version.output_format,
        "model": version.model_settings,
        "fallback_target": version.fallback_target,
        "warnings": version.warnings,
    }


def label_out(label: Label) -> dict[str, Any]:
    return {
        "name": label.name,
        "version": label.version.number,
        "protected": label.name in (label.template.squad.protected_labels or []),
        "updated_at": label.updated_at,
        "history": [
            {
                "from_version": m.from_version.number if m.from_version else None,
                "to_version": m.to_version.number,
                "actor": m.actor.get_username() if m.actor else None,
                "note": m.note,
                "moved_at": m.moved_at,
            }
            for m in label.moves.all()
        ],
    }


def _content(payload: VersionContentIn) -> dict[str, Any]:
    data = payload.dict()
    return {
        "messages": data["messages"],
        "input_schema": data["input_schema"],
        "output_schema": data["output_schema"],
        "output_format": data["output_format"],
        "model": data["model"],
        "fallback_target": data["fallback_target"],
    }


@router.get("/squads/{squad}/prompts", response=list[TemplateOut])
def template_list(request: HttpRequest, squad: str, filters: Query[PromptListQuery]) -> list:
    squad_obj = squad_get_for_user(user=request.auth, slug=squad)
    templates = selectors.prompt_template_list_for_user(
        user=request.auth, squad=squad_obj, **filters.dict()
    )
    return [template_out(t) for t in templates]


@router.post("/squads/{squad}/prompts", response={201: TemplateOut})
def template_create(request: HttpRequest, squad: str, payload: TemplateCreateIn) -> Status:
    squad_obj = squad_get_for_user(user=request.auth, slug=squad)
    first = payload.first_version
    template = services.prompt_template_create(
        actor=request.auth,
        squad=squad_obj,
        slug=payload.slug,
        description=payload.description,
        tags=payload.tags,
        first_version=(
            {
                **_content(first),
                "commit_message": first.commit_message,
            }
            if first is not None
            else None
        ),
        request=request,
    )
    template = selectors.prompt_template_get_for_user(
        user=request.auth, squad_slug=squad, slug=template.slug
    )
    return Status(201, template_out(template))


@router.post("/squads/{squad}/prompts/check")
def content_check(request: HttpRequest, squad: str, payload: VersionContentIn) -> dict:
    """Validate content without saving it (editors, CI linters): errors refuse a save,
    warnings are kept on the version."""
    squad_get_for_user(user=request.auth, slug=squad)
    _, report = services.check_content(**_content(payload))
    return {
        "ok": not report.errors,
        "errors": report.errors,
        "warnings": report.warnings,
        "variables": sorted(report.variables),
    }


@router.get(
    "/squads/{squad}/prompts/{slug}",
    response={200: dict, 304: None},
    summary="Fetch a prompt by label (default production) or version — the runtime call",
)
def prompt_fetch(
    request: HttpRequest, squad: str, slug: str, ref: Query[FetchQuery]
) -> HttpResponse:
    label = ref.label if ref.label is not None or ref.version is not None else DEFAULT_LABEL
    fetched = runtime.fetch(
        user=request.auth, squad_slug=squad, template_slug=slug, label=label, version=ref.version
    )
    if runtime.etag_matches(request.headers.get("If-None-Match"), fetched.etag):
        response = HttpResponse(status=304)
    else:
        response = HttpResponse(fetched.body, content_type="application/json")
    response["ETag"] = fetched.etag
    # Clients may keep the body but must revalidate (cheap: a 304 without a body).
    response["Cache-Control"] = "private, no-cache"
    return response


@router.post("/squads/{squad}/prompts/{slug}/render", response=RenderOut)
def prompt_render(
    request: HttpRequest, squad: str, slug: str, payload: RenderIn, ref: Query[FetchQuery]
) -> dict:
    """Validate variables against the input schema and return the rendered messages (422
    lists every schema error with its JSON path)."""
    label = ref.label if ref.label is not None or ref.version is not None else DEFAULT_LABEL
    body = runtime.fetch(
        user=request.auth, squad_slug=squad, template_slug=slug, label=label, version=ref.version
    ).payload()
    messages = render_messages(body["messages"], body["input_schema"], payload.variables)
    return {
        "prompt": slug,
        "version": body["version"],
        "label": body["label"],
        "content_hash": body["content_hash"],
        "messages": messages,
    }


@router.patch("/squads/{squad}/prompts/{slug}", response=TemplateOut)
def template_update(request: HttpRequest, squad: str, slug: str, payload: TemplateUpdateIn) -> dict:
    template = selectors.prompt_template_get_for_user(
        user=request.auth, squad_slug=squad, slug=slug
    )
    services.prompt_template_update(
        actor=request.auth, template=template, request=request, **payload.dict(exclude_unset=True)
    )
    return template_out(template)


@router.get("/squads/{squad}/prompts/{slug}/versions", response=list[VersionSummaryOut])
def version_list(request: HttpRequest, squad: str, slug: str) -> list:
    template = selectors.prompt_template_get_for_user(
        user=request.auth, squad_slug=squad, slug=slug
    )
    return [
        version_summary(v)
        for v in selectors.prompt_version_list(user=request.auth, template=template)
    ]


@router.post("/squads/{squad}/prompts/{slug}/versions", response={201: VersionOut})
def version_create(request: HttpRequest, squad: str, slug: str, payload: VersionCreateIn) -> Status:
    template = selectors.prompt_template_get_for_user(
        user=request.auth, squad_slug=squad, slug=slug
    )
    version = services.prompt_version_create(
        actor=request.auth,
        template=template,
        commit_message=payload.commit_message,
        parent_number=payload.parent_number,
        request=request,
        **_content(payload),
    )
    version = selectors.prompt_version_get(
        user=request.auth, template=template, number=version.number
    )
    return Status(201, version_out(version))


@router.get("/squads/{squad}/prompts/{slug}/versions/{number}", response=VersionOut)
def version_detail(request: HttpRequest, squad: str, slug: str, number: int) -> dict:
    template = selectors.prompt_template_get_for_user(
        user=request.auth, squad_slug=squad, slug=slug
    )
    return version_out(
        selectors.prompt_version_get(user=request.auth, template=template, number=number)
    )


@router.get("/squads/{squad}/prompts/{slug}/diff", response=PromptDiffOut)
def version_diff_view(
    request: HttpRequest, squad: str, slug: str, q: Query[PromptDiffQuery]
) -> dict:
    """Side-by-side diff of two versions and a schema diff classifying each change."""
    template = selectors.prompt_template_get_for_user(
        user=request.auth, squad_slug=squad, slug=slug
    )
    old = selectors.prompt_version_get(user=request.auth, template=template, number=q.from_version)
    new = selectors.prompt_version_get(user=request.auth, template=template, number=q.to_version)
    return version_diff(old, new)


@router.get("/squads/{squad}/prompts/{slug}/labels", response=list[LabelOut])
def label_list(request: HttpRequest, squad: str, slug: str) -> list:
    template = selectors.prompt_template_get_for_user(
        user=request.auth, squad_slug=squad, slug=slug
    )
    return [label_out(lb) for lb in selectors.label_list(user=request.auth, template=template)]


@router.put("/squads/{squad}/prompts/{slug}/labels/{name}", response=LabelOut)
def label_move(
    request: HttpRequest, squad: str, slug: str, name: str, payload: LabelMoveIn
) -> dict:
    """Point a label at a version (roll back = point it at an earlier one)."""
    template = selectors.prompt_template_get_for_user(
        user=request.auth, squad_slug=squad, slug=slug
    )
    version = selectors.prompt_version_get(
        user=request.auth, template=template, number=payload.version
    )
    label = services.label_move(
        actor=request.auth,
        template=template,
        name=name,
        version=version,
        note=payload.note,
        request=request,
    )
    return label_out(selectors.label_list(user=request.auth, template=template).get(pk=label.pk))
