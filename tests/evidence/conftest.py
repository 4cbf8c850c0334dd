"""A version that went through the whole flow, built through the services: v1 approved and
on `production`; v2 saved by the engineer, reviewed (the SME approves twice, the second
decision replacing the first; compliance approves), evaluated against v1's run, run
through governance (one generation redacted, one blocked) and moved to `production`."""

from dataclasses import dataclass

import pytest

from apps.evals import services as evals
from apps.evals.models import EvalRun
from apps.generation import services as generation
from apps.governance import services as governance
from apps.prompts import services as prompts
from apps.prompts.models import PromptTemplate, PromptVersion
from apps.reviews.models import ReviewRequest
from apps.reviews.services import approvals
from tests.factories import UserFactory
from tests.generation.conftest import TEXT_SCHEMA, fake_server, remote_target, text_prompt  # noqa: F401
from tests.reviews.factories import approve, open_review

RULES = {"pii": {"email": "redact", "ssn": "block"}, "blocked_terms": []}


@dataclass
class Flow:
    template: PromptTemplate
    v1: PromptVersion
    v2: PromptVersion
    review: ReviewRequest
    run_v1: EvalRun
    run_v2: EvalRun


@pytest.fixture(autouse=True)
def data_dir(settings, tmp_path):
    settings.DATA_DIR = tmp_path
    return tmp_path


def _eval(version: PromptVersion) -> EvalRun:
    run = evals.eval_run_create(actor=UserFactory(username="engineer"), version=version)
    evals.eval_run_execute(run_id=run.pk)
    run.refresh_from_db()
    assert run.status == EvalRun.Status.SUCCEEDED, run.error
    return run


@pytest.fixture
def flow(squad, fake_server) -> Flow:  # noqa: F811
    owner = UserFactory(username="owner")
    engineer = UserFactory(username="engineer")
    remote_target(squad, fake_server.url)
    governance.policy_update(
        actor=UserFactory(username="compliance"), squad=squad, rules=RULES, note="PII rules"
    )
    v1 = text_prompt(squad)
    template = v1.template
    for name, needle in (("mentions the topic", "cats"), ("says write", "Write")):
        evals.test_case_create(
            actor=engineer,
            template=template,
            name=name,
            variables={"topic": "cats"},
            assertions=[{"type": "contains", "value": needle}],
        )
    approve(v1)
    prompts.label_move(actor=owner, template=template, name="production", version=v1)
    run_v1 = _eval(v1)

    v2 = prompts.prompt_version_create(
        actor=engineer,
        template=template,
        messages=[{"role": "user", "content": "Describe {{ topic }} briefly."}],
        input_schema=TEXT_SCHEMA,
        model={"target": "fake", "max_new_tokens": 32, "temperature": 0.0, "seed": 1},
        commit_message="Shorter answers",
    )
    review = open_review(v2, note="Please check the wording.")
    sme = UserFactory(username="sme")
    approvals.review_decide(actor=sme, review=review, verdict="approve", comment="first look")
    approvals.review_decide(actor=sme, review=review, verdict="approve", comment="reads well")
    review = approvals.review_decide(
        actor=UserFactory(username="compliance"),
        review=review,
        verdict="approve",
        comment="no PII in the template",
    )
    assert review.state == ReviewRequest.State.APPROVED, review.missing

    for topic in ("dogs", "mail ada@example.com", "ssn 123-45-6789"):
        g = generation.generation_request(actor=engineer, version=v2, variables={"topic": topic})
        if g.status != "blocked":
            generation.generation_run(generation_id=g.pk)
    run_v2 = _eval(v2)
    prompts.label_move(
        actor=owner, template=template, name="production", version=v2, note="release 2"
    )
    return Flow(template, v1, v2, review, run_v1, run_v2)
