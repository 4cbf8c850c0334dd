"""Role × action matrix: every action, every role, through the API and the HTML views.

Each row names the roles allowed; every other role must be refused — with 404
when the caller cannot see the squad (outsiders) and 403 when they can (members
without the permission). Later issues add their actions to ACTIONS.
"""

import json
from collections.abc import Callable
from dataclasses import dataclass

import pytest
from django.test import Client

from apps.squads import services
from apps.squads.models import ApiToken
from tests.conftest import ApiClient
from tests.factories import PASSWORD, UserFactory

ROLES = ("owner", "engineer", "sme", "compliance", "viewer", "outsider", "staff")
MEMBERS = ("owner", "engineer", "sme", "compliance", "viewer")
EVERYONE = frozenset(ROLES)


@dataclass(frozen=True)
class Action:
    name: str
    allowed: frozenset[str]
    api: Callable[[ApiClient], object] | None
    view: Callable[[Client], object] | None
    # Who sees 404 rather than 403 when refused: those who cannot see the squad.
    hidden_from: frozenset[str] = frozenset({"outsider", "staff"})


def _upload_batch(c: ApiClient):
    from django.core.files.uploadedfile import SimpleUploadedFile

    rows = b'{"customer": {"name": "A"}, "question": "q"}\n'
    return c.client.post(
        f"{P}/support/batches",
        {"file": SimpleUploadedFile("rows.jsonl", rows), "version": "1"},
        headers=c.headers,
    )


def _with_registered(call: Callable[[], object]) -> object:
    """A second ready base model, 'matrix-model', then the call."""
    from tests.basemodels.factories import ready_model

    ready_model("matrix-model")
    return call()


def _with_own_target(call: Callable[[], object]) -> object:
    """The squad's own local target 'own', then the call."""
    from apps.generation.models import ModelTarget
    from apps.squads.models import Squad

    ModelTarget.objects.get_or_create(
        squad=Squad.objects.get(slug="acme"),
        name="own",
        defaults={"kind": "local", "base_model": "smollm2-135m-instruct"},
    )
    return call()


def _other_token_id() -> int:
    other = UserFactory(username="token-owner")
    token, _ = services.api_token_create(actor=other, name="theirs")
    return token.pk


def _review_item(*annotators: str) -> int:
    """Review queue 'matrix' (every annotating role, overlap 2) with one item, approved by
    `annotators`; the item's id."""
    from apps.reviews.models import ReviewItem
    from apps.reviews.services import queues
    from apps.squads.models import Squad

    owner = UserFactory(username="owner")
    queue = queues.review_queue_create(
        actor=owner,
        squad=Squad.objects.get(slug="acme"),
        name="Matrix",
        rubric=[],
        overlap=2,
        annotator_roles=["owner", "prompt_engineer", "sme", "compliance"],
    )
    added = queues.review_items_add_external(
        actor=owner, queue=queue, items=[{"inputs": {}, "output": "text"}]
    )
    for name in annotators:
        item = ReviewItem.objects.get(pk=added.ids[0])
        queues.review_annotate(
            actor=UserFactory(username=name), item=item, verdict="approve", scores={}
        )
    return added.ids[0]


P = "/api/v1/squads/acme/prompts"
RQ = "/api/v1/squads/acme/review-queues"
RQV = "/squads/acme/review-queues"


def _new_version_body() -> dict:
    from tests.prompts.factories import content

    return content(commit_message="v2", model={"temperature": 0.1})


ACTIONS = [
    Action(
        "squad.view",
        frozenset(MEMBERS),
        api=lambda c: c.call("GET", "/api/v1/squads/acme"),
        view=lambda c: c.get("/squads/acme/"),
    ),
    Action(
        "squad.update",
        frozenset({"owner"}),
        api=lambda c: c.call("PATCH", "/api/v1/squads/acme", {"description": "new"}),
        view=lambda c: c.post("/squads/acme/settings", {"name": "Acme", "description": "new"}),
    ),
    Action(
        "member.list",
        frozenset(MEMBERS),
        api=lambda c: c.call("GET", "/api/v1/squads/acme/members"),
        view=lambda c: c.get("/squads/acme/members/"),
    ),
    Action(
        "member.add",
        frozenset({"owner"}),
        api=lambda c: c.call(
            "POST", "/api/v1/squads/acme/members", {"username": "newbie", "roles": ["sme"]}
        ),
        view=lambda c: c.post("/squads/acme/members/", {"username": "newbie", "roles": ["sme"]}),
    ),
    Action(
        "member.set_roles",
        frozenset({"owner"}),
        api=lambda c: c.call("PATCH", "/api/v1/squads/acme/members/sme", {"roles": ["viewer"]}),
        view=lambda c: c.post("/squads/acme/members/sme", {"roles": ["viewer"]}),
    ),
    Action(
        "member.remove",
        frozenset({"owner"}),
        api=lambda c: c.call("DELETE", "/api/v1/squads/acme/members/sme"),
        view=lambda c: c.post("/squads/acme/members/sme/remove"),
    ),
    Action(
        "audit.read",
        frozenset({"owner", "compliance", "staff"}),
        api=lambda c: c.call("GET", "/api/v1/audit/events?squad=acme"),
        view=lambda c: c.get("/audit/acme/"),
        hidden_from=frozenset({"outsider"}),
    ),
    Action(
        "audit.export",
        frozenset({"owner", "compliance", "staff"}),
        api=lambda c: c.call("GET", "/api/v1/audit/export?squad=acme&format=csv"),
        view=None,
        hidden_from=frozenset({"outsider"}),
    ),
    Action(
        "audit.read_all",
        frozenset({"staff"}),
        api=lambda c: c.call("GET", "/api/v1/audit/events"),
        view=None,
        hidden_from=frozenset(),
    ),
    Action(
        "jobs.gpu_share_set",
        frozenset({"staff"}),
        api=lambda c: c.call("PUT", "/api/v1/gpu-shares/acme", {"share": 2, "max_running": 1}),
        view=None,
        hidden_from=frozenset(),
    ),
    Action(
        "audit.verify_chain",
        frozenset({"staff"}),
        api=lambda c: c.call("POST", "/api/v1/audit/verifications"),
        view=None,
        hidden_from=frozenset(),
    ),
    Action(
        "squad.create",
        EVERYONE,
        api=lambda c: c.call("POST", "/api/v1/squads", {"name": "New", "slug": "new-squad"}),
        view=lambda c: c.post("/", {"name": "New", "slug": "new-squad"}),
    ),
    Action(
        "token.create",
        EVERYONE,
        api=lambda c: c.call("POST", "/api/v1/tokens", {"name": "ci"}),
        view=lambda c: c.post("/account/tokens/", {"name": "ci"}),
    ),
    Action(
        "prompt.list",
        frozenset(MEMBERS),
        api=lambda c: c.call("GET", P),
        view=None,
    ),
    Action(
        "prompt.fetch",
        frozenset(MEMBERS),
        api=lambda c: c.call("GET", f"{P}/support?label=production"),
        view=None,
    ),
    Action(
        "prompt.render",
        frozenset(MEMBERS),
        api=lambda c: c.call(
            "POST",
            f"{P}/support/render",
            {"variables": {"customer": {"name": "A"}, "question": "q"}},
        ),
        view=None,
    ),
    Action(
        "prompt.versions_and_diff",
        frozenset(MEMBERS),
        api=lambda c: c.call("GET", f"{P}/support/diff?from_version=1&to_version=1"),
        view=None,
    ),
    Action(
        "prompt.create",
        frozenset({"owner", "engineer"}),
        api=lambda c: c.call("POST", P, {"slug": "fresh"}),
        view=None,
    ),
    Action(
        "prompt.update",
        frozenset({"owner", "engineer"}),
        api=lambda c: c.call("PATCH", f"{P}/support", {"description": "new"}),
        view=None,
    ),
    Action(
        "prompt.version_create",
        frozenset({"owner", "engineer"}),
        api=lambda c: c.call("POST", f"{P}/support/versions", _new_version_body()),
        view=None,
    ),
    Action(
        "label.move",
        frozenset({"owner", "engineer"}),
        api=lambda c: c.call("PUT", f"{P}/support/labels/staging", {"version": 1}),
        view=None,
    ),
    Action(
        "label.move_protected",
        frozenset({"owner", "engineer"}),
        api=lambda c: _move_production_to_approved_v2(c),
        view=lambda c: _move_production_to_approved_v2_view(c),
    ),
    Action(
        "policy.update",
        frozenset({"owner", "compliance"}),
        api=lambda c: c.call(
            "PUT",
            "/api/v1/squads/acme/approval-policy",
            {"required_approvals": {"sme": 2}, "protected_labels": ["production", "prod"]},
        ),
        view=lambda c: c.post(
            "/squads/acme/approval-policy",
            {"required_sme": "2", "protected_labels": "production, prod"},
        ),
    ),
    Action(
        "review.request",
        frozenset({"owner", "engineer"}),
        api=lambda c: c.call("POST", f"{P}/support/versions/2/review-requests", {"note": "ok?"}),
        view=lambda c: c.post("/squads/acme/prompts/support/v2/review", {"note": "ok?"}),
    ),
    Action(
        "review.decide",
        frozenset({"owner", "engineer", "sme", "compliance"}),
        api=lambda c: _decide_on_v2(c),
        view=lambda c: _decide_on_v2_in_page(c),
    ),
    Action(
        "comment.add",
        frozenset({"owner", "engineer", "sme", "compliance"}),
        api=lambda c: c.call("POST", f"{P}/support/versions/2/comments", {"body": "Typo."}),
        view=lambda c: c.post("/squads/acme/prompts/support/v2/comments", {"body": "Typo."}),
    ),
    Action(
        "comment.resolve",
        frozenset({"owner", "engineer", "sme", "compliance"}),
        api=lambda c: c.call(
            "POST", f"/api/v1/squads/acme/comments/{_thread_on_v2()}/resolve", {"resolved": True}
        ),
        view=lambda c: c.post(
            f"/squads/acme/comments/{_thread_on_v2()}/resolve", {"resolved": "1"}
        ),
    ),
    Action(
        "target.list",
        frozenset(MEMBERS),
        api=lambda c: c.call("GET", "/api/v1/squads/acme/targets"),
        view=lambda c: c.get("/squads/acme/targets/"),
    ),
    Action(
        "target.create",
        frozenset({"owner"}),
        api=lambda c: c.call(
            "POST",
            "/api/v1/squads/acme/targets",
            {"name": "tgi", "kind": "remote", "base_url": "http://127.0.0.1:9"},
        ),
        view=lambda c: c.post(
            "/squads/acme/targets/new",
            {"name": "tgi", "kind": "remote", "base_url": "http://127.0.0.1:9"},
        ),
    ),
    Action(
        "target.form",
        frozenset({"owner"}),
        api=None,
        view=lambda c: c.get("/squads/acme/targets/new"),
    ),
    Action(
        "target.choose_base_model",
        frozenset({"owner"}),
        api=lambda c: _with_registered(
            lambda: c.call(
                "POST",
                "/api/v1/squads/acme/targets",
                {"name": "own-model", "kind": "local", "base_model": "matrix-model"},
            )
        ),
        view=lambda c: _with_registered(
            lambda: c.post(
                "/squads/acme/targets/new",
                {"name": "own-model", "kind": "local", "base_model": "matrix-model"},
            )
        ),
    ),
    Action(
        "target.update",
        frozenset({"owner"}),
        api=lambda c: _with_own_target(
            lambda: c.call(
                "PUT", "/api/v1/squads/acme/targets/own", {"description": "x", "enabled": True}
            )
        ),
        view=lambda c: _with_own_target(
            lambda: c.post(
                "/squads/acme/targets/own/edit",
                {"kind": "local", "base_model": "smollm2-135m-instruct", "description": "x"},
            )
        ),
    ),
    Action(
        "target.update_form",
        frozenset({"owner"}),
        api=None,
        view=lambda c: _with_own_target(lambda: c.get("/squads/acme/targets/own/edit")),
    ),
    Action(
        "basemodel.register",
        frozenset({"staff"}),
        api=lambda c: c.call(
            "POST",
            "/api/v1/base-models",
            {"name": "byo", "source_kind": "folder", "source": "byo-model"},
        ),
        view=None,
        hidden_from=frozenset(),
    ),
    Action(
        "basemodel.update",
        frozenset({"staff"}),
        api=lambda c: c.call(
            "PATCH", "/api/v1/base-models/smollm2-135m-instruct", {"notes": "changed"}
        ),
        view=None,
        hidden_from=frozenset(),
    ),
    Action(
        "basemodel.list",
        EVERYONE,
        api=lambda c: c.call("GET", "/api/v1/base-models"),
        view=None,
        hidden_from=frozenset(),
    ),
    Action(
        "generation.run",
        frozenset({"owner", "engineer"}),
        api=lambda c: c.call(
            "POST",
            f"{P}/support/generate",
            {"variables": {"customer": {"name": "A"}, "question": "q"}},
        ),
        view=None,
    ),
    Action(
        "batch.create",
        frozenset({"owner", "engineer"}),
        api=lambda c: _upload_batch(c),
        view=None,
    ),
    Action(
        "batch.list",
        frozenset(MEMBERS),
        api=lambda c: c.call("GET", "/api/v1/squads/acme/batches"),
        view=None,
    ),
    Action(
        "generation.list",
        frozenset(MEMBERS),
        api=None,
        view=lambda c: c.get("/squads/acme/generations/?status=ok"),
    ),
    Action(
        "eval.index",
        frozenset(MEMBERS),
        api=None,
        view=lambda c: c.get("/squads/acme/evals/"),
    ),
    Action(
        "queue.create",
        frozenset({"owner", "engineer", "compliance"}),
        api=lambda c: c.call(
            "POST", RQ, {"name": "New queue", "rubric": [], "annotator_roles": ["sme"]}
        ),
        view=lambda c: c.post(
            f"{RQV}/new", {"name": "New queue", "rubric": "rows", "annotator_roles": ["sme"]}
        ),
    ),
    Action(
        "queue.annotate",
        frozenset({"owner", "engineer", "sme", "compliance"}),
        api=lambda c: c.call(
            "POST", f"{RQ}/matrix/items/{_review_item()}/annotations", {"verdict": "approve"}
        ),
        view=lambda c: c.post(
            f"{RQV}/matrix/items/{_review_item()}/annotate", {"verdict": "approve"}
        ),
    ),
    Action(
        "queue.adjudicate",
        frozenset({"owner", "compliance"}),
        api=lambda c: c.call(
            "POST",
            f"{RQ}/matrix/items/{_review_item('sme', 'engineer')}/adjudication",
            {"verdict": "reject"},
        ),
        view=lambda c: c.post(
            f"{RQV}/matrix/items/{_review_item('sme', 'engineer')}/adjudicate",
            {"verdict": "reject"},
        ),
    ),
    Action(
        "queue.export",
        frozenset({"owner", "engineer"}),
        api=lambda c: _review_item("sme", "engineer") and c.call("POST", f"{RQ}/matrix/exports"),
        view=lambda c: _review_item("sme", "engineer") and c.post(f"{RQV}/matrix/exports"),
    ),
    Action(
        "dataset.create",
        frozenset({"owner", "engineer"}),
        api=lambda c: c.call(
            "POST",
            "/api/v1/squads/acme/datasets",
            {"slug": "chat-rows", "name": "Chat rows", "format": "chat"},
        ),
        view=lambda c: c.post(
            "/squads/acme/datasets/", {"slug": "chat-rows", "name": "Chat rows", "format": "chat"}
        ),
    ),
    Action(
        "dataset.list",
        frozenset(MEMBERS),
        api=lambda c: c.call("GET", "/api/v1/squads/acme/datasets"),
        view=lambda c: c.get("/squads/acme/datasets/"),
    ),
    Action(
        "governance.policy_update",
        frozenset({"owner", "compliance"}),
        api=lambda c: c.call(
            "PUT",
            "/api/v1/squads/acme/governance-policy",
            {"rules": {"blocked_terms": ["matrix"]}},
        ),
        view=lambda c: c.post(
            "/squads/acme/governance/", {"pii_email": "redact", "blocked_terms": "matrix"}
        ),
    ),
    Action(
        "governance.test_bench",
        frozenset(MEMBERS),
        api=lambda c: c.call(
            "POST", "/api/v1/squads/acme/governance-policy/test", {"text": "a@example.com"}
        ),
        view=lambda c: c.post("/squads/acme/governance/test", {"text": "a@example.com"}),
    ),
    Action(
        "finetune.create",
        frozenset({"owner", "engineer"}),
        api=lambda c: _start_finetune(
            lambda: c.call("POST", "/api/v1/squads/acme/finetune-jobs", {"dataset": "ft"})
        ),
        view=lambda c: _start_finetune(lambda: c.post("/squads/acme/finetune/", {"dataset": "ft"})),
    ),
    Action(
        "prompt.sample_file",
        frozenset(MEMBERS),
        api=None,
        view=lambda c: c.get("/squads/acme/prompts/support/versions/2/sample.csv"),
    ),
    Action(
        "dataset.sample_file",
        frozenset(MEMBERS),
        api=None,
        view=lambda c: _with_finetune_dataset(
            lambda: c.get("/squads/acme/datasets/ft/sample.jsonl")
        ),
    ),
    Action(
        "finetune.preflight",
        frozenset({"owner", "engineer"}),
        api=None,
        view=lambda c: _with_finetune_dataset(
            lambda: c.post("/squads/acme/finetune/preflight", {"dataset": "ft", "target": "local"})
        ),
    ),
    Action(
        "adapter.approve",
        frozenset({"owner", "compliance"}),
        api=lambda c: c.call("POST", f"/api/v1/squads/acme/adapters/{_adapter()}/approval"),
        view=lambda c: c.post(f"/squads/acme/finetune/adapters/{_adapter()}/"),
    ),
    Action(
        "evidence.export",
        frozenset({"owner", "compliance"}),
        api=lambda c: c.call("GET", f"{P}/support/versions/2/evidence"),
        view=lambda c: c.get("/squads/acme/prompts/support/versions/2/evidence.zip"),
    ),
    Action(
        "evidence.view",
        frozenset({"owner", "compliance"}),
        api=None,
        view=lambda c: c.get("/squads/acme/prompts/support/versions/2/evidence"),
    ),
    Action(
        "webhook.create",
        frozenset({"owner"}),
        api=lambda c: c.call(
            "POST", WH, {"url": "https://receiver.example/h", "events": ["label.moved"]}
        ),
        view=lambda c: c.post(
            f"{WHV}/", {"url": "https://receiver.example/h", "events": ["label.moved"]}
        ),
    ),
    Action(
        "webhook.list",
        frozenset({"owner"}),
        api=lambda c: c.call("GET", WH),
        view=lambda c: c.get(f"{WHV}/"),
    ),
    Action(
        "webhook.update",
        frozenset({"owner"}),
        api=lambda c: c.call("PATCH", f"{WH}/{_webhook()}", {"enabled": False}),
        view=lambda c: c.post(
            f"{WHV}/{_webhook()}/", {"url": "https://r.example/h", "events": ["job.finished"]}
        ),
    ),
    Action(
        "webhook.rotate_secret",
        frozenset({"owner"}),
        api=lambda c: c.call("POST", f"{WH}/{_webhook()}/secret"),
        view=lambda c: c.post(f"{WHV}/{_webhook()}/secret"),
    ),
    Action(
        "webhook.test_send",
        frozenset({"owner"}),
        api=lambda c: c.call("POST", f"{WH}/{_webhook()}/test"),
        view=lambda c: c.post(f"{WHV}/{_webhook()}/test"),
    ),
    Action(
        "webhook.deliveries",
        frozenset({"owner"}),
        api=lambda c: c.call("GET", f"{WH}/{_webhook()}/deliveries"),
        view=lambda c: c.get(f"{WHV}/{_webhook()}/"),
    ),
    Action(
        "webhook.delete",
        frozenset({"owner"}),
        api=lambda c: c.call("DELETE", f"{WH}/{_webhook()}"),
        view=lambda c: c.post(f"{WHV}/{_webhook()}/delete"),
    ),
    Action(
        "adapter.compare",
        frozenset({"owner", "engineer"}),
        api=lambda c: c.call(
            "POST", f"/api/v1/squads/acme/adapters/{_adapter()}/comparisons", {"prompts": ["hi"]}
        ),
        view=lambda c: c.post(
            f"/squads/acme/finetune/adapters/{_adapter()}/comparisons", {"prompts": "hi"}
        ),
    ),
    Action(
        "adapter.comparison_read",
        frozenset(MEMBERS),
        api=lambda c: c.call(
            "GET", "/api/v1/squads/acme/adapters/{}/comparisons/{}".format(*_comparison())
        ),
        view=lambda c: c.get(
            "/squads/acme/finetune/adapters/{}/comparisons/{}/".format(*_comparison())
        ),
    ),
    Action(
        "adapter.attach",
        frozenset({"owner"}),
        api=lambda c: c.call(
            "PUT", "/api/v1/squads/acme/targets/tuned/adapter", {"adapter": _attachable()}
        ),
        view=lambda c: c.post(
            f"/squads/acme/finetune/adapters/{_attachable()}/attach", {"target": "tuned"}
        ),
    ),
    Action(
        "eval.read",
        frozenset(MEMBERS),
        api=lambda c: c.call("GET", f"{P}/support/cases"),
        view=lambda c: c.get("/squads/acme/evals/prompts/support/"),
    ),
    Action(
        "eval.case_create",
        frozenset({"owner", "engineer", "sme"}),
        api=lambda c: c.call("POST", f"{P}/support/cases", _EVAL_CASE),
        view=lambda c: c.post(
            "/squads/acme/evals/prompts/support/",
            {**_EVAL_CASE, "variables": json.dumps(_EVAL_CASE["variables"]), "assertions": "[]"},
        ),
    ),
    Action(
        "eval.case_import",
        frozenset({"owner", "engineer", "sme"}),
        api=lambda c: c.client.post(
            f"{P}/support/cases/import", {"file": _eval_cases_file()}, headers=c.headers
        ),
        view=lambda c: c.post(
            "/squads/acme/evals/prompts/support/cases/import", {"file": _eval_cases_file()}
        ),
    ),
    Action(
        "eval.run",
        frozenset({"owner", "engineer"}),
        api=lambda c: _with_eval_case(
            lambda: c.call("POST", "/api/v1/squads/acme/evals", {"prompt": "support"})
        ),
        view=lambda c: _with_eval_case(
            lambda: c.post("/squads/acme/evals/prompts/support/runs", {"version": "1"})
        ),
    ),
    Action(
        "eval.run_cancel",
        frozenset({"owner", "engineer"}),
        api=lambda c: c.call("POST", f"/api/v1/squads/acme/evals/{_eval_run()}/cancel"),
        view=lambda c: c.post(f"/squads/acme/evals/runs/{_eval_run()}/cancel"),
    ),
    Action(
        "feedback.submit",
        frozenset(MEMBERS),
        api=lambda c: c.call(
            "POST", f"/api/v1/squads/acme/generations/{_generation()}/feedback", {"thumbs": 1}
        ),
        view=lambda c: c.post(
            f"/squads/acme/generations/{_generation()}/feedback", {"kind": "thumbs", "thumbs": "up"}
        ),
    ),
    Action(
        "feedback.list",
        frozenset(MEMBERS),
        api=lambda c: c.call("GET", f"/api/v1/squads/acme/generations/{_generation()}/feedback"),
        view=lambda c: c.get(f"/squads/acme/generations/{_generation()}/feedback"),
    ),
    Action(
        "dashboard.view",
        frozenset(MEMBERS),
        api=lambda c: c.call("GET", "/api/v1/squads/acme/prompts/support/dashboard?range=7"),
        view=lambda c: c.get("/squads/acme/prompts/support/dashboard?range=7"),
    ),
    Action(
        "alert.list",
        frozenset(MEMBERS),
        api=lambda c: c.call("GET", "/api/v1/squads/acme/alerts?state=all"),
        view=lambda c: c.get("/squads/acme/alerts/?state=all"),
    ),
    Action(
        "alert.acknowledge",
        frozenset({"owner", "engineer", "compliance"}),
        api=lambda c: c.call("POST", f"/api/v1/squads/acme/alerts/{_alert()}/acknowledge", {}),
        view=lambda c: c.post(f"/squads/acme/alerts/{_alert()}/acknowledge", {"note": "seen"}),
    ),
    Action(
        "alert.rule_update",
        frozenset({"owner", "engineer", "compliance"}),
        api=lambda c: c.call(
            "PUT",
            "/api/v1/squads/acme/alert-rule",
            {"threshold": 0.2, "window": 80, "baseline_size": 80, "min_samples": 40},
        ),
        view=lambda c: c.post(
            "/squads/acme/alerts/rule",
            {"threshold": "0.2", "window": "80", "baseline_size": "80", "min_samples": "40"},
        ),
    ),
    Action(
        "gateway.key_create",
        frozenset({"owner"}),
        api=lambda c: c.call("POST", SK, {"name": "app", "targets": ["local"]}),
        view=lambda c: c.post(
            f"{GWV}/keys", {"name": "app", "targets": "local", "allow_gateway": "on"}
        ),
    ),
    Action(
        "gateway.key_list",
        frozenset({"owner", "engineer", "compliance"}),
        api=lambda c: c.call("GET", SK),
        view=lambda c: c.get(f"{GWV}/"),
    ),
    Action(
        "gateway.key_rotate",
        frozenset({"owner"}),
        api=lambda c: c.call("POST", f"{SK}/{_service_key()}/rotate", {"overlap_seconds": 60}),
        view=lambda c: c.post(f"{GWV}/keys/{_service_key()}/rotate", {"overlap_seconds": "60"}),
    ),
    Action(
        "gateway.key_revoke",
        frozenset({"owner"}),
        api=lambda c: c.call("DELETE", f"{SK}/{_service_key()}"),
        view=lambda c: c.post(f"{GWV}/keys/{_service_key()}/revoke"),
    ),
    Action(
        "gateway.quota_set",
        frozenset({"owner"}),
        api=lambda c: c.call(
            "PUT", "/api/v1/squads/acme/gateway/quotas", {"requests_per_minute": 60}
        ),
        view=lambda c: c.post(f"{GWV}/quota", {"requests_per_minute": "60"}),
    ),
    Action(
        "gateway.quota_list",
        frozenset({"owner", "engineer", "compliance"}),
        api=lambda c: c.call("GET", "/api/v1/squads/acme/gateway/quotas"),
        view=None,
    ),
    Action(
        "gateway.cache_rule_set",
        frozenset({"owner"}),
        api=lambda c: c.call(
            "PUT", "/api/v1/squads/acme/gateway/cache-rules", {"model": "local", "ttl_seconds": 60}
        ),
        view=lambda c: c.post(f"{GWV}/cache", {"model": "local", "ttl_seconds": "60"}),
    ),
    Action(
        "gateway.cache_rule_list",
        frozenset({"owner", "engineer", "compliance"}),
        api=lambda c: c.call("GET", "/api/v1/squads/acme/gateway/cache-rules"),
        view=None,
    ),
    Action(
        "gateway.usage",
        frozenset({"owner", "engineer", "compliance"}),
        api=lambda c: c.call("GET", "/api/v1/squads/acme/gateway/usage"),
        view=None,
    ),
    Action(
        "token.revoke_other_users",
        frozenset(),
        api=lambda c: c.call("DELETE", f"/api/v1/tokens/{_other_token_id()}"),
        view=lambda c: c.post(f"/account/tokens/{_other_token_id()}/revoke"),
        hidden_from=EVERYONE,
    ),
]


WH = "/api/v1/squads/acme/webhooks"
WHV = "/squads/acme/webhooks"
SK = "/api/v1/squads/acme/service-keys"
GWV = "/squads/acme/gateway"


def _service_key() -> int:
    from apps.gateway import services as gateway
    from apps.squads.models import Squad

    key, _ = gateway.service_key_create(
        actor=UserFactory(username="owner"), squad=Squad.objects.get(slug="acme"), name="k"
    )
    return key.pk


def _webhook() -> int:
    """A webhook of squad acme (its test-send is queued at commit, which a test never
    reaches: nothing is sent)."""
    from apps.squads.models import Squad
    from apps.webhooks import services as webhooks

    webhook, _ = webhooks.webhook_create(
        actor=UserFactory(username="owner"),
        squad=Squad.objects.get(slug="acme"),
        url="https://receiver.example/hook",
        events=["version.created"],
    )
    return webhook.pk


def _finetune_dataset():
    from apps.finetune import services as finetune
    from apps.squads.models import Squad

    owner = UserFactory(username="owner")
    dataset = finetune.dataset_create(
        actor=owner, squad=Squad.objects.get(slug="acme"), slug="ft", name="FT", format="chat"
    )
    row = {"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]}
    return finetune.dataset_version_upload(
        actor=owner, dataset=dataset, content=json.dumps(row).encode(), filename="r.jsonl"
    )


def _with_finetune_dataset(call):
    _finetune_dataset()
    return call()


def _start_finetune(call):
    """Start a job with the training runtime faked (tests.finetune.fake_training): the
    matrix checks who may, not what training does."""
    from tests.finetune import fake_training

    _finetune_dataset()
    with pytest.MonkeyPatch.context() as mp:
        fake_training.install(mp, fake_training.Script())
        return call()


def _adapter() -> int:
    """An adapter from a job the 'author' (none of the matrix's roles) started."""
    from apps.basemodels.models import BaseModel
    from apps.finetune.models import Adapter, FineTuneJob
    from apps.generation.models import ModelTarget

    version = _finetune_dataset()
    job = FineTuneJob.objects.create(
        squad=version.dataset.squad,
        dataset_version=version,
        target=ModelTarget.objects.get(name="local", squad__isnull=True),
        base_model="smollm2-135m-instruct",
        created_by=UserFactory(username="author"),
        status="succeeded",
    )
    adapter = Adapter.objects.create(
        squad=job.squad,
        job=job,
        dataset_version=version,
        path="/nonexistent",
        sha256="a" * 64,
        size_bytes=1,
        base_model=job.base_model,
        base_model_sha256=BaseModel.objects.get(name=job.base_model).current.manifest_sha256,
    )
    return adapter.pk


def _comparison() -> tuple[int, int]:
    """(adapter id, comparison id) of a finished comparison."""
    from apps.finetune.models import Adapter, AdapterComparison

    adapter = Adapter.objects.get(pk=_adapter())
    comparison = AdapterComparison.objects.create(
        squad=adapter.squad, adapter=adapter, status="succeeded", base_loss=2.0, adapter_loss=1.5
    )
    return adapter.pk, comparison.pk


def _attachable() -> int:
    """An approved adapter, and the squad's own local target 'tuned' of its base model."""
    from django.utils import timezone

    from apps.finetune.models import Adapter
    from apps.generation.models import ModelTarget

    adapter_id = _adapter()
    Adapter.objects.filter(pk=adapter_id).update(approved_at=timezone.now())
    adapter = Adapter.objects.get(pk=adapter_id)
    ModelTarget.objects.create(
        squad=adapter.squad, name="tuned", kind="local", base_model=adapter.base_model
    )
    return adapter_id


def _prompt_with_two_versions(squad) -> None:
    """Prompt 'support': version 1 (by owner) approved and on production; version 2 by
    'author', a prompt engineer who is none of the matrix's roles (so every role may
    review it)."""
    from apps.prompts import services as prompts
    from tests.prompts.factories import make_prompt
    from tests.reviews.factories import approve

    owner = UserFactory(username="owner")
    author = UserFactory(username="author")
    services.membership_add(actor=owner, squad=squad, user=author, roles=["prompt_engineer"])
    template = make_prompt(squad, owner)
    approve(template.latest_version)
    prompts.label_move(
        actor=owner, template=template, name="production", version=template.latest_version
    )
    prompts.prompt_version_create(
        actor=author, template=template, **{**_new_version_body(), "model": {"seed": 3}}
    )


def _v2():
    from apps.prompts.models import PromptVersion

    return PromptVersion.objects.get(template__slug="support", number=2)


def _move_production_to_approved_v2(c: ApiClient):
    from tests.reviews.factories import approve

    approve(_v2())
    return c.call("PUT", f"{P}/support/labels/production", {"version": 2})


def _move_production_to_approved_v2_view(c: Client):
    from tests.reviews.factories import approve

    approve(_v2())
    return c.post("/squads/acme/prompts/support/labels/production", {"version": "2"})


def _decide_on_v2(c: ApiClient):
    from tests.reviews.factories import open_review

    review = open_review(_v2())
    return c.call(
        "POST", f"/api/v1/squads/acme/review-requests/{review.pk}/decisions", {"verdict": "approve"}
    )


def _thread_on_v2() -> int:
    """A comment thread on v2 of 'support', opened by the SME."""
    from apps.reviews.services.approvals import comment_add

    return comment_add(actor=UserFactory(username="sme"), version=_v2(), body="Typo?").pk


def _decide_on_v2_in_page(c: Client):
    from tests.reviews.factories import open_review

    review = open_review(_v2())
    return c.post(f"/squads/acme/reviews/{review.pk}/decide", {"verdict": "approve"})


def _user(role: str):
    if role == "staff":
        return UserFactory(username="staffer", is_staff=True)
    return UserFactory(username=role)


def _expected_denial(action: Action, role: str) -> int:
    return 404 if role in action.hidden_from else 403


CASES = [
    pytest.param(action, role, channel, id=f"{action.name}-{role}-{channel}")
    for action in ACTIONS
    for role in ROLES
    for channel in ("api", "view")
    if getattr(action, channel) is not None
]


@pytest.mark.parametrize(("action", "role", "channel"), CASES)
def test_role_action_matrix(squad, action: Action, role: str, channel: str) -> None:
    UserFactory(username="newbie")
    _prompt_with_two_versions(squad)
    user = _user(role)
    if channel == "api":
        _, secret = services.api_token_create(actor=user, name="matrix")
        response = action.api(ApiClient(secret))
        allowed_status = range(200, 300)
    else:
        client = Client()
        assert client.login(username=user.username, password=PASSWORD)
        response = action.view(client)
        allowed_status = range(200, 400)
    if role in action.allowed:
        assert response.status_code in allowed_status, (
            f"{role} should be allowed {action.name} via {channel}: "
            f"{response.status_code} {getattr(response, 'content', b'')[:300]}"
        )
    else:
        expected = _expected_denial(action, role)
        assert response.status_code == expected, (
            f"{role} should be refused {action.name} via {channel} with {expected}: "
            f"{response.status_code} {getattr(response, 'content', b'')[:300]}"
        )


def test_matrix_covers_every_registered_permission() -> None:
    """A permission added to the registry without a row here fails this test."""
    from apps.squads.permissions import REGISTRY

    covered = COVERED
    assert {p.codename for p in REGISTRY} == set(covered)
    names = {a.name for a in ACTIONS}
    assert set(covered.values()) <= names


COVERED = {
    "view_squad": "squad.view",
    "change_squad": "squad.update",
    "manage_members": "member.add",
    "view_audit": "audit.read",
    "edit_prompts": "prompt.version_create",
    "move_protected_labels": "label.move_protected",
    "run_generation": "generation.run",
    "manage_targets": "target.create",
    "manage_review_queues": "queue.create",
    "annotate_outputs": "queue.annotate",
    "adjudicate_outputs": "queue.adjudicate",
    "export_reviewed_outputs": "queue.export",
    "manage_datasets": "dataset.create",
    "manage_approval_policy": "policy.update",
    "request_review": "review.request",
    "decide_review": "review.decide",
    "comment_prompts": "comment.add",
    "run_finetune": "finetune.create",
    "approve_adapters": "adapter.approve",
    "manage_governance_policy": "governance.policy_update",
    "write_test_cases": "eval.case_create",
    "run_evals": "eval.run",
    "submit_feedback": "feedback.submit",
    "manage_alerts": "alert.acknowledge",
    "manage_webhooks": "webhook.create",
    "export_evidence": "evidence.export",
    "manage_gateway": "gateway.key_create",
    "view_gateway": "gateway.key_list",
}


MATRIX_ROLE = {
    "owner": "owner",
    "engineer": "prompt_engineer",
    "sme": "sme",
    "compliance": "compliance",
    "viewer": "viewer",
}


def test_matrix_rows_grant_exactly_the_registry_roles() -> None:
    """The README's role table, the registry and this matrix must agree: each registry
    permission's row allows exactly the roles the registry gives it."""
    from apps.squads.permissions import BY_CODENAME

    by_name = {a.name: a for a in ACTIONS}
    for codename, action_name in COVERED.items():
        allowed = {MATRIX_ROLE[r] for r in by_name[action_name].allowed if r in MATRIX_ROLE}
        assert allowed == {r.value for r in BY_CODENAME[codename].roles}, codename


def test_readme_role_table_matches_the_registry() -> None:
    from pathlib import Path

    from apps.squads.permissions import REGISTRY, Role

    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    section = readme.split("### Roles", 1)[1].split("\n#", 1)[0]
    header = next(line for line in section.splitlines() if line.startswith("| permission"))
    columns = [c.strip() for c in header.strip("|").split("|")]
    role_of_column = {
        "owner": Role.OWNER,
        "prompt engineer": Role.PROMPT_ENGINEER,
        "SME": Role.SME,
        "compliance": Role.COMPLIANCE,
        "viewer": Role.VIEWER,
    }
    documented = {}
    for line in section.splitlines():
        if not line.startswith("| `"):
            continue
        cells = [c.strip() for c in line.strip("|").split("|")]
        codename = cells[0].strip("`")
        documented[codename] = {
            role_of_column[col]
            for col, cell in zip(columns, cells, strict=True)
            if col in role_of_column and cell == "✓"
        }
    assert documented == {p.codename: set(p.roles) for p in REGISTRY}


def test_revoked_token_of_other_user_is_untouched(squad) -> None:
    victim = UserFactory(username="victim")
    token, _ = services.api_token_create(actor=victim, name="mine")
    _, secret = services.api_token_create(actor=UserFactory(username="sme"), name="x")
    ApiClient(secret).call("DELETE", f"/api/v1/tokens/{token.pk}")
    assert ApiToken.objects.get(pk=token.pk).revoked_at is None


_EVAL_CASE = {"name": "matrix", "variables": {"customer": {"name": "A"}, "question": "q"}}


def _eval_cases_file():
    from django.core.files.uploadedfile import SimpleUploadedFile

    return SimpleUploadedFile("cases.jsonl", (json.dumps(_EVAL_CASE) + "\n").encode())


def _with_eval_case(call):
    from apps.evals import services as evals
    from apps.prompts.models import PromptTemplate

    template = PromptTemplate.objects.get(slug="support")
    evals.test_case_create(
        actor=UserFactory(username="owner"), template=template, **_EVAL_CASE, assertions=[]
    )
    return call()


def _eval_run() -> int:
    from apps.evals import services as evals
    from apps.prompts.models import PromptVersion

    version = PromptVersion.objects.get(template__slug="support", number=1)
    return _with_eval_case(
        lambda: evals.eval_run_create(actor=UserFactory(username="owner"), version=version).pk
    )


def _generation() -> int:
    """A finished generation of prompt 'support' v1 (for feedback)."""
    from apps.generation.models import Generation, ModelTarget
    from apps.prompts.models import PromptVersion

    version = PromptVersion.objects.get(template__slug="support", number=1)
    return Generation.objects.create(
        squad=version.template.squad,
        prompt_version=version,
        target=ModelTarget.objects.get(name="local", squad__isnull=True),
        variables={},
        output_text="out",
        status=Generation.Status.OK,
        source=Generation.Source.API,
    ).pk


def _alert() -> int:
    """An open drift alert on prompt 'support' v1."""
    from apps.feedback.models import Alert
    from apps.prompts.models import PromptVersion

    version = PromptVersion.objects.get(template__slug="support", number=1)
    return Alert.objects.create(
        squad=version.template.squad,
        prompt_version=version,
        metric=Alert.Metric.FEEDBACK_SCORE,
        baseline=0.9,
        current=0.5,
        drop=0.44,
        baseline_samples=100,
        window_samples=100,
        last_sample_id=1,
    ).pk
