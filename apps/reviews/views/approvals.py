"""HTML views for approving prompt versions: the inbox, a review request's page (diff
against the protected labels, decisions, comments), the review panel and comment threads
of a version, the squad's approval policy, notifications.

Each view parses the request, calls one reviews service or selector (the same ones the
API calls) and renders a page, or one of its partials when htmx asks; an ApplicationError
renders inline with its status code."""

import json
from collections import defaultdict
from typing import Any

from django.contrib.auth.decorators import login_required
from django.http import HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.urls import path, reverse
from django.utils.http import url_has_allowed_host_and_scheme
from django.views.decorators.http import require_GET, require_http_methods, require_POST

from apps.core.exceptions import ApplicationError, NotFound, ValidationFailed
from apps.core.http import parse_id
from apps.core.views import parse_int, partial_template
from apps.evals.selectors import eval_gate_status_for_user
from apps.prompts import selectors as prompt_selectors
from apps.prompts.diff import version_diff
from apps.prompts.models import PromptVersion
from apps.reviews.models import ReviewComment, ReviewDecision, ReviewRequest
from apps.reviews.policy import ROLE_NOUN, Vote, derive, is_closed
from apps.reviews.selectors import approvals as selectors
from apps.reviews.services import approvals as services
from apps.squads.access import has_squad_permission, squad_roles
from apps.squads.models import Squad
from apps.squads.permissions import (
    COMMENT_PROMPTS,
    DECIDE_REVIEW,
    MANAGE_APPROVAL_POLICY,
    REQUEST_REVIEW,
    Role,
)
from apps.squads.selectors import membership_list, squad_get_for_user

INBOX_LIMIT = 200
NOTIFICATION_LIMIT = 100
State = ReviewRequest.State
# The states services.review_withdraw accepts; the button shows only for them.
WITHDRAWABLE = (State.OPEN, State.CHANGES_REQUESTED, State.APPROVED)


def _status(error: ApplicationError | None) -> int:
    return error.status_code if error else 200


def _pass_rate(raw: str) -> float | None:
    if not raw:
        return None
    try:
        return float(raw)
    except ValueError:
        raise ValidationFailed(
            f"The minimum eval pass rate must be a number from 0 to 1 (got '{raw}').",
            field="min_eval_pass_rate",
        ) from None


def _role_noun(role: str) -> str:
    return ROLE_NOUN.get(role, (role, role))[0]


# --- inbox and notifications -------------------------------------------------------------


@login_required
@require_GET
def inbox(request: HttpRequest) -> HttpResponse:
    """Review requests waiting for the signed-in user's decision, across their squads (or
    in one, with ?squad=), oldest first."""
    slug = request.GET.get("squad", "").strip()
    squad = squad_get_for_user(user=request.user, slug=slug) if slug else None
    waiting = selectors.inbox_for_user(user=request.user)
    per_squad: dict[int, dict[str, Any]] = {}
    for item in waiting:
        entry = per_squad.setdefault(item.squad_id, {"squad": item.squad, "count": 0})
        entry["count"] += 1
    items = [i for i in waiting if squad is None or i.squad_id == squad.pk]
    context = {
        "items": items[:INBOX_LIMIT],
        "total": len(items),
        "per_squad": sorted(per_squad.values(), key=lambda e: e["squad"].name),
        "squad_filter": squad,
        "limit": INBOX_LIMIT,
    }
    return render(request, partial_template(request, "reviews/inbox.html", "inbox-items"), context)


@login_required
@require_GET
def notifications(request: HttpRequest) -> HttpResponse:
    """The user's latest notifications, unread ones marked."""
    items = list(selectors.notification_list_for_user(user=request.user)[:NOTIFICATION_LIMIT])
    return render(request, "reviews/notifications.html", {"items": items})


@login_required
@require_POST
def notifications_read(request: HttpRequest) -> HttpResponse:
    """Mark the given notifications read (all of them without ids)."""
    ids = [n for i in request.POST.getlist("id") if (n := parse_id(i)) is not None] or None
    services.notification_mark_read(actor=request.user, ids=ids)
    return redirect("reviews:notifications")


@login_required
@require_GET
def notification_open(request: HttpRequest, pk: int) -> HttpResponse:
    """Follow a notification's link, marking it read on the way."""
    notification = selectors.notification_list_for_user(user=request.user).filter(pk=pk).first()
    if notification is None:
        raise NotFound(f"Notification {pk} not found.")
    services.notification_mark_read(actor=request.user, ids=[notification.pk])
    url = notification.url
    if not url_has_allowed_host_and_scheme(url, allowed_hosts={request.get_host()}):
        url = reverse("reviews:notifications")
    return redirect(url)


# --- review requests ---------------------------------------------------------------------


@login_required
@require_GET
def request_list(request: HttpRequest, squad: str) -> HttpResponse:
    """The squad's review requests, newest first, optionally in one state."""
    squad_obj = squad_get_for_user(user=request.user, slug=squad)
    state = request.GET.get("state", "").strip()
    if state not in State.values:
        state = ""
    requests = selectors.review_request_list_for_user(
        user=request.user, squad=squad_obj, state=state or None
    )
    context = {
        "squad": squad_obj,
        "requests": list(requests[:INBOX_LIMIT]),
        "state": state,
        "states": State.choices,
        "limit": INBOX_LIMIT,
    }
    return render(
        request, partial_template(request, "reviews/requests.html", "request-rows"), context
    )


def _threads_at(threads: list[ReviewComment]) -> dict[tuple[int, int], list[ReviewComment]]:
    """Anchored threads by (message index, line), for showing them under their line."""
    at: dict[tuple[int, int], list[ReviewComment]] = defaultdict(list)
    for thread in threads:
        if thread.message_index is not None and thread.line is not None:
            at[(thread.message_index, thread.line)].append(thread)
    return at


def _review_diff(
    old: PromptVersion,
    new: PromptVersion,
    threads_at: dict[tuple[int, int], list[ReviewComment]],
) -> dict[str, Any]:
    """The side-by-side diff of the prompt's diff page, each line of the reviewed (right)
    side carrying the comment threads anchored to it."""
    result = version_diff(old, new)
    for row in result["config"]:
        row["old"], row["new"] = json.dumps(row["old"]), json.dumps(row["new"])
    result["breaking_count"] = sum(c["breaking"] for c in result["schema_changes"])
    result["changed_messages"] = sum(m["changed"] for m in result["messages"])
    for m in result["messages"]:
        m["number"] = m["index"] + 1
        for row in m["rows"]:
            right = row["right_no"] if m["new_role"] else None
            row["threads"] = threads_at.get((m["index"], right), []) if right else []
    return result


def _review_diffs(
    request: HttpRequest,
    review: ReviewRequest,
    threads_at: dict[tuple[int, int], list[ReviewComment]],
) -> list[dict[str, Any]]:
    """What the reviewed version is compared with: the version of the user's last review
    of this prompt (or where changes were last requested), then each protected label's
    version. Once a label points at the reviewed version, it is compared with the version
    the label pointed at before that move, so the diff stays on the page."""
    user = request.user
    protected = review.squad.protected_labels or []
    behind = {
        label.name: label.version
        for label in prompt_selectors.label_list(user=user, template=review.template)
        if label.name in protected
    }
    entries: list[dict[str, Any]] = []
    for name in protected:
        old = behind.get(name)
        entry: dict[str, Any] = {"kind": "label", "label": name, "version": old, "moved": False}
        if old is not None and old.pk == review.version_id:
            before = selectors.label_previous_version(
                user=user, template=review.template, name=name, version=review.version
            )
            entry["moved"] = True
            old = before
        entry["base"] = old
        entry["diff"] = (
            _review_diff(old, review.version, threads_at)
            if old is not None and old.pk != review.version_id
            else None
        )
        entries.append(entry)
    previous = selectors.review_request_previous_base(user=user, review=review)
    if previous is not None:
        base, reason = previous
        same = next((e for e in entries if e["base"] is not None and e["base"].pk == base.pk), None)
        if same is not None:
            same["also"] = reason
        else:
            entries.insert(
                0,
                {
                    "kind": "since",
                    "reason": reason,
                    "base": base,
                    "name": f"v{base.number}",
                    "diff": _review_diff(base, review.version, threads_at),
                },
            )
    return entries


def _decision_context(request: HttpRequest, review: ReviewRequest) -> dict[str, Any]:
    """What the decision panel shows: the policy snapshot, what is missing, current
    decisions with the role each approval counted for, the history, and the form."""
    squad, user = review.squad, request.user
    author_id = review.version.author_id
    decisions = list(review.decisions.all())
    current = [d for d in decisions if d.is_current]
    # The roles approvals fill, also while a blocking verdict keeps the request closed.
    counted = derive(
        policy=review.policy,
        author_id=author_id,
        votes=[
            Vote(d.reviewer_id, d.verdict, tuple(d.roles))
            for d in current
            if d.verdict == ReviewDecision.Verdict.APPROVE
        ],
    ).counted
    for d in current:
        d.counted_as = _role_noun(counted[d.reviewer_id]) if d.reviewer_id in counted else ""
        d.by_author = d.reviewer_id == author_id
    required = review.policy.get("required_approvals") or {}
    is_author = user.pk == author_id
    closed = is_closed(state=review.state, policy=review.policy)
    may_withdraw = (
        (user.pk == review.opened_by_id and has_squad_permission(user, squad, REQUEST_REVIEW))
        or user.is_superuser
        or Role.OWNER.value in squad_roles(user, squad.pk)
    )
    return {
        "squad": squad,
        "review": review,
        "current_decisions": current,
        "history": [d for d in decisions if not d.is_current],
        "my_decision": next((d for d in current if d.reviewer_id == user.pk), None),
        "required": [(_role_noun(role), n) for role, n in sorted(required.items()) if n],
        "verdicts": ReviewDecision.Verdict.choices,
        "closed": closed,
        "is_author": is_author,
        "can_decide": not is_author
        and not closed
        and has_squad_permission(user, squad, DECIDE_REVIEW),
        "can_withdraw": may_withdraw and review.state in WITHDRAWABLE,
    }


def _review(request: HttpRequest, squad: str, pk: int) -> ReviewRequest:
    squad_obj = squad_get_for_user(user=request.user, slug=squad)
    return selectors.review_request_get_for_user(user=request.user, squad=squad_obj, pk=pk)


@login_required
@require_GET
def request_detail(request: HttpRequest, squad: str, pk: int) -> HttpResponse:
    review = _review(request, squad, pk)
    comments = _comment_context(
        request,
        review.version,
        review=review,
        form=_anchor_from_query(request),
    )
    context = {
        **_decision_context(request, review),
        **comments,
        "review_diffs": _review_diffs(request, review, comments["threads_at"]),
        "template": review.template,
        "version": review.version,
        "eval_status": eval_gate_status_for_user(user=request.user, version=review.version),
    }
    return render(request, "reviews/request.html", context)


@login_required
@require_POST
def request_decide(request: HttpRequest, squad: str, pk: int) -> HttpResponse:
    review = _review(request, squad, pk)
    error = None
    try:
        services.review_decide(
            actor=request.user,
            review=review,
            verdict=request.POST.get("verdict", ""),
            comment=request.POST.get("comment", ""),
            request=request,
        )
    except ApplicationError as exc:
        error = exc
    if error is None and not request.htmx:
        return redirect("reviews:request", squad=squad, pk=pk)
    review = _review(request, squad, pk)
    context = {
        **_decision_context(request, review),
        "decision_error": error,
        "decided": error is None,
        "form": {
            "verdict": request.POST.get("verdict", ""),
            "comment": request.POST.get("comment", ""),
        }
        if error
        else {},
    }
    # A decision takes the request out of the reviewer's inbox: the navigation count follows.
    page = "reviews/request.html#" + ("decision-panel" if error else "decided")
    return render(request, page, context, status=_status(error))


@login_required
@require_POST
def request_withdraw(request: HttpRequest, squad: str, pk: int) -> HttpResponse:
    review = _review(request, squad, pk)
    error = None
    try:
        services.review_withdraw(actor=request.user, review=review, request=request)
    except ApplicationError as exc:
        error = exc
    if error is None and not request.htmx:
        return redirect("reviews:request", squad=squad, pk=pk)
    review = _review(request, squad, pk)
    context = {
        **_decision_context(request, review),
        "decision_error": error,
        "withdrawn": not error,
    }
    return render(request, "reviews/request.html#decision-panel", context, status=_status(error))


# --- a version's review panel and comment threads ------------------------------------------


def _version(request: HttpRequest, squad: str, slug: str, number: int) -> PromptVersion:
    template = prompt_selectors.prompt_template_get_for_user(
        user=request.user, squad_slug=squad, slug=slug
    )
    return prompt_selectors.prompt_version_get(user=request.user, template=template, number=number)


def _panel_context(
    request: HttpRequest,
    version: PromptVersion,
    *,
    form: dict[str, Any] | None = None,
    error: ApplicationError | None = None,
    opened: ReviewRequest | None = None,
) -> dict[str, Any]:
    squad = version.template.squad
    review = selectors.review_request_for_version(user=request.user, version=version)
    live = review is not None and review.state in ReviewRequest.HOLDING_STATES
    show_form = has_squad_permission(request.user, squad, REQUEST_REVIEW) and (
        not live or error is not None
    )
    return {
        "squad": squad,
        "template": version.template,
        "version": version,
        "review": review,
        "show_form": show_form,
        # Named reviewers are picked from the members who may decide.
        "candidates": [
            m
            for m in membership_list(user=request.user, squad=squad)
            if m.user_id != request.user.pk and set(m.roles) & set(DECIDE_REVIEW.roles)
        ]
        if show_form
        else [],
        "form": form or {"note": "", "reviewers": []},
        "request_error": error,
        "opened": opened,
    }


@login_required
@require_http_methods(["GET", "POST"])
def version_review(request: HttpRequest, squad: str, slug: str, number: int) -> HttpResponse:
    """A version's review state with a link to its request, and the "Request review" form
    (the prompt and version pages load it with htmx); POST opens the request."""
    version = _version(request, squad, slug, number)
    page = partial_template(request, "reviews/version.html", "version-review")
    if request.method == "GET":
        context = _panel_context(request, version)
        if not request.htmx:
            context.update(_comment_context(request, version))
        return render(request, page, context)
    form = {
        "note": request.POST.get("note", ""),
        "reviewers": [r for r in request.POST.getlist("reviewers") if r],
    }
    try:
        reviewers = selectors.reviewers_by_username(usernames=form["reviewers"])
        opened = services.review_request_open(
            actor=request.user,
            version=version,
            note=form["note"],
            reviewers=reviewers,
            request=request,
        )
    except ApplicationError as exc:
        context = _panel_context(request, version, form=form, error=exc)
        return render(request, page, context, status=exc.status_code)
    if not request.htmx:
        return redirect("reviews:request", squad=squad, pk=opened.pk)
    return render(request, page, _panel_context(request, version, opened=opened))


def _numbered_messages(
    version: PromptVersion, threads_at: dict[tuple[int, int], list[ReviewComment]]
) -> list[dict[str, Any]]:
    """The version's messages split into numbered lines, the way comments anchor to them,
    each line with the threads anchored to it."""
    return [
        {
            "index": i,
            "number": i + 1,
            "role": m["role"],
            "lines": [
                {"no": no, "text": text, "threads": threads_at.get((i, no), [])}
                for no, text in enumerate(m["content"].split("\n"), start=1)
            ],
        }
        for i, m in enumerate(version.messages)
    ]


def _anchor_from_query(request: HttpRequest) -> dict[str, Any] | None:
    """`?comment_on=2.5` (message 2, line 5, counted from 1 as on the page): the comment
    form starts anchored there. This is what a line number links to without JavaScript."""
    raw = request.GET.get("comment_on", "")
    message, _, line = raw.partition(".")
    if parse_id(message) is None or parse_id(line) is None:
        return None
    return {"message_index": message, "line": line}


def _anchor_text(version: PromptVersion, comment: ReviewComment) -> str:
    if comment.message_index is None or comment.message_index >= len(version.messages):
        return ""
    lines = version.messages[comment.message_index]["content"].split("\n")
    if comment.line is None or not 1 <= comment.line <= len(lines):
        return ""
    return lines[comment.line - 1]


def _comment_context(
    request: HttpRequest,
    version: PromptVersion,
    *,
    review: ReviewRequest | None = None,
    form: dict[str, Any] | None = None,
    error: ApplicationError | None = None,
    error_thread: int | None = None,
) -> dict[str, Any]:
    squad = version.template.squad
    threads = list(selectors.comment_thread_list_for_user(user=request.user, version=version))
    for thread in threads:
        thread.anchor_text = _anchor_text(version, thread)
    threads_at = _threads_at(threads)
    form = form or {}
    anchor = None
    message, line = str(form.get("message_index", "")), str(form.get("line", ""))
    if (number := parse_id(message)) is not None and (line_no := parse_id(line)) is not None:
        anchor = {"message": number, "line": line_no}
        probe = ReviewComment(message_index=anchor["message"] - 1, line=anchor["line"])
        anchor["text"] = _anchor_text(version, probe)
    if review is not None:
        comment_on_url = reverse("reviews:request", args=[squad.slug, review.pk])
    else:
        comment_on_url = reverse(
            "reviews:comments", args=[squad.slug, version.template.slug, version.number]
        )
    return {
        "threads_at": threads_at,
        "numbered": _numbered_messages(version, threads_at),
        "comment_anchor": anchor,
        "comment_on_url": comment_on_url,
        "squad": squad,
        "template": version.template,
        "version": version,
        "comment_review": review,
        "threads": threads,
        "open_threads": sum(1 for t in threads if t.resolved_at is None),
        "can_comment": has_squad_permission(request.user, squad, COMMENT_PROMPTS),
        "comment_form": form,
        "comment_error": error,
        "error_thread": error_thread,
    }


@login_required
@require_http_methods(["GET", "POST"])
def version_comments(request: HttpRequest, squad: str, slug: str, number: int) -> HttpResponse:
    """A version's comment threads; POST adds a comment (a new thread, optionally anchored
    to a message and line, or a reply with `parent`)."""
    version = _version(request, squad, slug, number)
    page = partial_template(request, "reviews/version.html", "comment-threads")
    # Comments written on a request's page belong to that request too.
    review_id = parse_int(request.POST.get("review"), field="review", label="Review", minimum=0)
    review = (
        selectors.review_request_get_for_user(
            user=request.user, squad=version.template.squad, pk=review_id
        )
        if review_id
        else None
    )
    if request.method == "GET":
        context = _comment_context(
            request, version, review=review, form=_anchor_from_query(request)
        )
        if not request.htmx:
            context.update(_panel_context(request, version))
        return render(request, page, context)
    data = request.POST
    form = {k: data.get(k, "") for k in ("body", "message_index", "line", "parent")}
    parent_id = None
    try:
        parent_id = parse_int(form["parent"], field="parent", label="Thread", minimum=0)
        message = parse_int(
            form["message_index"], field="message_index", label="Message", minimum=0
        )
        parent = (
            selectors.comment_get_for_user(user=request.user, version=version, pk=parent_id)
            if parent_id
            else None
        )
        services.comment_add(
            actor=request.user,
            version=version,
            body=form["body"],
            # The form counts messages from 1, like the page; the model from 0.
            message_index=message - 1 if message else None,
            line=parse_int(form["line"], field="line", label="Line", minimum=0),
            parent=parent,
            review=review,
            request=request,
        )
    except ApplicationError as exc:
        context = _comment_context(
            request, version, review=review, form=form, error=exc, error_thread=parent_id
        )
        return render(request, page, context, status=exc.status_code)
    if not request.htmx:
        return redirect(_comments_home(squad, version, review))
    return render(request, page, _comment_context(request, version, review=review))


@login_required
@require_POST
def comment_resolve(request: HttpRequest, squad: str, pk: int) -> HttpResponse:
    """Resolve a thread (or reopen it with resolved=0)."""
    squad_obj = squad_get_for_user(user=request.user, slug=squad)
    comment = selectors.comment_get_for_user(user=request.user, squad=squad_obj, pk=pk)
    version = comment.version
    review_id = parse_int(request.POST.get("review"), field="review", label="Review", minimum=0)
    review = (
        selectors.review_request_get_for_user(user=request.user, squad=squad_obj, pk=review_id)
        if review_id
        else None
    )
    error = None
    try:
        services.comment_resolve(
            actor=request.user,
            comment=comment,
            resolved=request.POST.get("resolved", "1") != "0",
            request=request,
        )
    except ApplicationError as exc:
        error = exc
    if error is None and not request.htmx:
        return redirect(_comments_home(squad, version, review))
    context = _comment_context(request, version, review=review, error=error, error_thread=pk)
    return render(request, "reviews/version.html#comment-threads", context, status=_status(error))


def _comments_home(squad: str, version: PromptVersion, review: ReviewRequest | None) -> str:
    if review is not None:
        return reverse("reviews:request", args=[squad, review.pk]) + "#comments"
    return (
        reverse("prompts:version", args=[squad, version.template.slug, version.number])
        + "#comments"
    )


# --- approval policy -------------------------------------------------------------------


POLICY_ROLES = (Role.SME, Role.COMPLIANCE, Role.PROMPT_ENGINEER, Role.OWNER)


def _policy_context(
    request: HttpRequest,
    squad: Squad,
    *,
    error: ApplicationError | None = None,
    form: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The policy and the form's values: what was typed after a refusal, else the policy."""
    policy = selectors.approval_policy_get_for_user(user=request.user, squad=squad)
    required = policy.required_approvals or {}
    return {
        "squad": squad,
        "policy": policy,
        "rows": [
            {
                "role": role.value,
                "label": role.label,
                "count": (form or {}).get(f"required_{role.value}", required.get(role.value, 0)),
            }
            for role in POLICY_ROLES
        ],
        "protected_labels": (form or {}).get(
            "protected_labels", ", ".join(squad.protected_labels or [])
        ),
        "changes_block": (form or {}).get("changes_block", policy.changes_block),
        "threads_block": (form or {}).get("threads_block", policy.threads_block),
        "min_eval_pass_rate": (form or {}).get(
            "min_eval_pass_rate",
            "" if policy.min_eval_pass_rate is None else f"{policy.min_eval_pass_rate:g}",
        ),
        "can_manage": has_squad_permission(request.user, squad, MANAGE_APPROVAL_POLICY),
        "error": error,
    }


@login_required
@require_http_methods(["GET", "POST"])
def approval_policy(request: HttpRequest, squad: str) -> HttpResponse:
    """The squad's approval policy: editable by owners and compliance leads, read-only
    for the other members."""
    squad_obj = squad_get_for_user(user=request.user, slug=squad)
    if request.method == "GET":
        return render(request, "reviews/policy.html", _policy_context(request, squad_obj))
    data = request.POST
    form = {f"required_{r.value}": data.get(f"required_{r.value}", "") for r in POLICY_ROLES}
    form["protected_labels"] = data.get("protected_labels", "")
    form["changes_block"] = data.get("changes_block") == "on"
    form["threads_block"] = data.get("threads_block") == "on"
    # Absent from the form (older pages, scripts): left as it is; empty: no eval gate.
    pass_rate = services.KEEP
    if "min_eval_pass_rate" in data:
        form["min_eval_pass_rate"] = data.get("min_eval_pass_rate", "").strip()
    error = None
    try:
        if "min_eval_pass_rate" in form:
            pass_rate = _pass_rate(form["min_eval_pass_rate"])
        required = {}
        for role in POLICY_ROLES:
            n = parse_int(
                form[f"required_{role.value}"],
                field=f"required_approvals.{role.value}",
                label=f"Required {role.label.lower()} approvals",
                minimum=0,
            )
            if n:
                required[role.value] = n
        services.approval_policy_update(
            actor=request.user,
            squad=squad_obj,
            required_approvals=required,
            protected_labels=[s.strip() for s in form["protected_labels"].split(",") if s.strip()],
            changes_block=form["changes_block"],
            threads_block=form["threads_block"],
            min_eval_pass_rate=pass_rate,
            request=request,
        )
    except ApplicationError as exc:
        error = exc
    if error is None and not request.htmx:
        return redirect("reviews:policy", squad=squad)
    squad_obj = squad_get_for_user(user=request.user, slug=squad)
    context = {
        **_policy_context(request, squad_obj, error=error, form=form if error else None),
        "saved": error is None,
    }
    page = partial_template(request, "reviews/policy.html", "policy-form")
    return render(request, page, context, status=_status(error))


urlpatterns = [
    path("inbox/", inbox, name="inbox"),
    path("notifications/", notifications, name="notifications"),
    path("notifications/read", notifications_read, name="notifications_read"),
    path("notifications/<int:pk>", notification_open, name="notification_open"),
    path("squads/<slug:squad>/reviews/", request_list, name="requests"),
    path("squads/<slug:squad>/reviews/<int:pk>", request_detail, name="request"),
    path("squads/<slug:squad>/reviews/<int:pk>/decide", request_decide, name="decide"),
    path("squads/<slug:squad>/reviews/<int:pk>/withdraw", request_withdraw, name="withdraw"),
    path("squads/<slug:squad>/approval-policy", approval_policy, name="policy"),
    path(
        "squads/<slug:squad>/prompts/<slug:slug>/v<int:number>/review",
        version_review,
        name="version_review",
    ),
    path(
        "squads/<slug:squad>/prompts/<slug:slug>/v<int:number>/comments",
        version_comments,
        name="comments",
    ),
    path("squads/<slug:squad>/comments/<int:pk>/resolve", comment_resolve, name="comment_resolve"),
]
