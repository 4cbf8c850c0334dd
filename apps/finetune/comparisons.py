"""Adapter comparisons: an adapter against its base model, as a job on the gpu queue.

Web side: `adapter_comparison_create` checks the inputs (typed prompts, or rows of the
eval split of the adapter's dataset version, resolved to conversations now, so the job
runs exactly what was asked) and the generation parameters, stores the comparison,
audits it and enqueues it (apps.core.jobs) at commit.

Worker side: `_run_comparison`, under a lease of apps.core.jobs (the lifecycle every
long job shares), scores the base model and the adapter on the eval split with
`workers.runtime.training.evaluate` (answer tokens only, the adapter's own max_seq_len,
so both are scored on the same tokens), then generates every input with both models in
one batch each, with the same parameters and seed. A killed worker leaves a stale
heartbeat: the lifecycle's recovery requeues the comparison or fails it after its max
attempts; a rerun starts over (it writes nothing until its fenced finish).
"""

import dataclasses
import itertools
import json
import shutil
from pathlib import Path
from typing import Any

from django.conf import settings
from django.contrib.auth.models import AbstractBaseUser
from django.db import transaction
from django.http import HttpRequest
from django.urls import reverse

from apps.audit.services import audit_log
from apps.basemodels.selectors import base_model_ready
from apps.core import jobs, queues
from apps.core.exceptions import ValidationFailed
from apps.core.validation import clean_number
from apps.finetune.jobs import adapter_fits_base, training_row, write_rows
from apps.finetune.models import Adapter, AdapterComparison
from apps.squads.access import require_squad_permission
from apps.squads.permissions import RUN_FINETUNE

User = AbstractBaseUser
RUN_TASK = "finetune.comparison"
MAX_INPUTS = 8
MAX_PROMPT_CHARS = 4000
DEFAULT_EVAL_INPUTS = 3
DEFAULT_PARAMS: dict[str, Any] = {
    "max_new_tokens": 128,
    "temperature": 0.0,
    "top_p": 1.0,
    "seed": 0,
}
PARAM_LIMITS = {
    "max_new_tokens": (int, 1, 2048),
    "temperature": (float, 0.0, 2.0),
    "top_p": (float, 0.01, 1.0),
    "seed": (int, 0, 2**31 - 1),
}


# --- web side -----------------------------------------------------------------------------


def clean_params(params: dict[str, Any]) -> dict[str, Any]:
    """The generation parameters with defaults filled in; ValidationFailed naming
    `params.<name>` for an unknown key or a value out of range."""
    unknown = sorted(set(params) - set(DEFAULT_PARAMS))
    if unknown:
        raise ValidationFailed(
            f"Unknown params setting(s): {', '.join(unknown)}; known: {', '.join(DEFAULT_PARAMS)}.",
            field=f"params.{unknown[0]}",
        )
    values = {**DEFAULT_PARAMS, **{k: v for k, v in params.items() if v is not None}}
    for name, (kind, low, high) in PARAM_LIMITS.items():
        values[name] = clean_number(
            values[name], field=f"params.{name}", kind=kind, low=low, high=high
        )
    return values


def _as_input(converted: dict[str, Any], source: str) -> dict[str, Any]:
    """A runtime row as a comparison input: the conversation up to the answer, and the
    answer as the reference."""
    if "messages" in converted:
        messages = converted["messages"]
        if messages and messages[-1]["role"] == "assistant":
            return {
                "source": source,
                "messages": messages[:-1],
                "reference": messages[-1]["content"],
            }
        return {"source": source, "messages": messages, "reference": ""}
    return {
        "source": source,
        "messages": [{"role": "user", "content": converted["prompt"]}],
        "reference": converted["completion"],
    }


def _eval_row_inputs(adapter: Adapter, numbers: list[int] | None) -> list[dict[str, Any]]:
    """The chosen rows (1-based row numbers of the version's file), each in the eval
    split; with `numbers` None, the first DEFAULT_EVAL_INPUTS eval rows."""
    version = adapter.dataset_version
    dataset = version.dataset
    inputs: list[dict[str, Any]] = []
    if numbers is None:
        with open(version.path, encoding="utf-8") as handle:
            for number, line in enumerate(handle, start=1):
                row = json.loads(line)
                if row.get("split") == "eval":
                    inputs.append(_as_input(training_row(dataset, row), f"eval row {number}"))
                    if len(inputs) == DEFAULT_EVAL_INPUTS:
                        break
        return inputs
    wanted: dict[int, int] = {}
    for i, number in enumerate(numbers):
        where = f"eval_rows[{i}]"
        if isinstance(number, bool) or not isinstance(number, int):
            raise ValidationFailed(f"{where} must be a row number (got {number!r}).", field=where)
        if not 1 <= number <= version.row_count:
            raise ValidationFailed(
                f"{where}: {dataset.slug} v{version.number} has rows 1 to {version.row_count} "
                f"(got {number}).",
                field=where,
            )
        if number in wanted:
            raise ValidationFailed(f"{where}: row {number} is chosen twice.", field=where)
        wanted[number] = i
    found: dict[int, dict[str, Any]] = {}
    with open(version.path, encoding="utf-8") as handle:
        for number, line in enumerate(itertools.islice(handle, max(wanted)), start=1):
            if number in wanted:
                row = json.loads(line)
                if row.get("split") != "eval":
                    where = f"eval_rows[{wanted[number]}]"
                    raise ValidationFailed(
                        f"{where}: row {number} is in the {row.get('split', 'train')} split; "
                        "choose rows of the eval split (the adapter was trained on the others).",
                        field=where,
                    )
                found[number] = _as_input(training_row(dataset, row), f"eval row {number}")
    return [found[number] for number in numbers]


def _prompt_inputs(prompts: list[str]) -> list[dict[str, Any]]:
    inputs = []
    for i, text in enumerate(prompts):
        where = f"prompts[{i}]"
        if not isinstance(text, str) or not text.strip():
            raise ValidationFailed(f"{where} is empty.", field=where)
        if len(text) > MAX_PROMPT_CHARS:
            raise ValidationFailed(
                f"{where} is {len(text)} characters; the limit is {MAX_PROMPT_CHARS}.",
                field=where,
            )
        inputs.append(
            {"source": "prompt", "messages": [{"role": "user", "content": text}], "reference": ""}
        )
    return inputs


@transaction.atomic
def adapter_comparison_create(
    *,
    actor: User,
    adapter: Adapter,
    prompts: list[str] | None = None,
    eval_rows: list[int] | None = None,
    params: dict[str, Any] | None = None,
    request: HttpRequest | None = None,
) -> AdapterComparison:
    """Queue a comparison of `adapter` with its base model. Inputs: the typed `prompts`
    (each one user message) and the chosen `eval_rows` (row numbers in the adapter's
    dataset version, eval split only); with neither, the first DEFAULT_EVAL_INPUTS eval
    rows. At most MAX_INPUTS in all."""
    squad = adapter.squad
    require_squad_permission(actor, squad, RUN_FINETUNE)
    base = base_model_ready(adapter.base_model, field="adapter")
    adapter_fits_base(adapter, base, where="its base model is now")
    clean = clean_params(params or {})
    inputs = _prompt_inputs(prompts or [])
    if eval_rows or not inputs:
        inputs += _eval_row_inputs(adapter, eval_rows or None)
    if not inputs:
        raise ValidationFailed(
            f"{adapter.dataset_version.dataset.slug} v{adapter.dataset_version.number} has no "
            "eval rows to pick from; type at least one prompt.",
            field="prompts",
        )
    if len(inputs) > MAX_INPUTS:
        raise ValidationFailed(
            f"{len(inputs)} inputs; a comparison takes at most {MAX_INPUTS}.", field="prompts"
        )
    comparison = AdapterComparison.objects.create(
        squad=squad, adapter=adapter, inputs=inputs, params=clean, created_by=actor
    )
    audit_log(
        actor=actor,
        action="finetune.comparison_requested",
        squad=squad,
        target=comparison,
        data={
            "adapter": adapter.pk,
            "sha256": adapter.sha256,
            "inputs": [i["source"] for i in inputs],
            "params": clean,
        },
        request=request,
    )
    jobs.enqueue(comparison)
    return comparison


# --- worker side --------------------------------------------------------------------------


def _work_dir(comparison: AdapterComparison) -> Path:
    return (
        Path(settings.DATA_DIR)
        / "finetune"
        / str(comparison.squad_id)
        / "comparisons"
        / str(comparison.pk)
    )


def _text(outcome: Any) -> tuple[str, str]:
    """(output, error) of one runtime outcome."""
    from workers.runtime import BackendError

    if isinstance(outcome, BackendError):
        return "", str(outcome)
    return outcome.text, ""


def adapter_comparison_run(*, comparison_id: int) -> AdapterComparison | None:
    """Run one given comparison in this process (tests, management); workers run the next
    GPU job in fair-share order (apps.finetune.tasks). None when another live worker
    holds it, or it is already finished."""
    return jobs.run(COMPARISON.name, comparison_id)


def _run_comparison(lease: jobs.Lease) -> None:
    """See the module docstring."""
    from apps.generation.pipeline import report_changed_models
    from workers.runtime import GenerationParams, backends, training
    from workers.runtime.registry import ModelFilesChanged

    comparison: AdapterComparison = lease.job
    adapter = comparison.adapter
    try:
        # the base may have been registered again (or its files changed) since the
        # comparison was queued: both models run on the registration the adapter records
        base = base_model_ready(adapter.base_model, field="adapter")
        adapter_fits_base(adapter, base, where="its base model is now")
    except ValidationFailed as exc:
        lease.finish(AdapterComparison.Status.FAILED, exc.message)
        return
    max_seq_len = int(adapter.job.train.get("max_seq_len") or 512)
    batch_size = int(adapter.job.train.get("batch_size") or 4)
    work_dir = _work_dir(comparison)
    try:
        rows_path = write_rows(adapter.dataset_version, work_dir / "rows.jsonl")
        scores = {}
        for name, adapter_dir in (("base", None), ("adapter", Path(adapter.path))):
            scores[name] = training.evaluate(
                base_model=adapter.base_model,
                rows_path=rows_path,
                adapter_dir=adapter_dir,
                max_seq_len=max_seq_len,
                batch_size=batch_size,
                should_cancel=lease.should_stop,
                base_model_sha256=base.manifest_sha256,
            )
        params = GenerationParams(**comparison.params)
        conversations = [i["messages"] for i in comparison.inputs]
        base_spec = backends.TargetSpec(
            name="base",
            kind="local",
            base_model=adapter.base_model,
            base_model_sha256=base.manifest_sha256,
        )
        adapter_spec = dataclasses.replace(
            base_spec, name=f"adapter-{adapter.pk}", adapter_dir=adapter.path
        )
        size = len(conversations)
        base_out = backends.run_conversations(base_spec, conversations, params, batch_size=size)
        if lease.should_stop():
            return
        tuned_out = backends.run_conversations(adapter_spec, conversations, params, batch_size=size)
        report_changed_models([*base_out, *tuned_out])
    except ModelFilesChanged as exc:
        report_changed_models([exc])
        lease.finish(AdapterComparison.Status.FAILED, str(exc))
        return
    except training.TrainingError as exc:
        if not lease.should_stop():
            lease.finish(AdapterComparison.Status.FAILED, f"{exc.kind}: {exc}")
        return
    finally:
        if not lease.lost:  # the rows copy was only needed for scoring
            shutil.rmtree(work_dir, ignore_errors=True)
    if lease.should_stop():
        return
    outputs = []
    for given, base, tuned in zip(comparison.inputs, base_out, tuned_out, strict=True):
        base_text, base_error = _text(base)
        tuned_text, tuned_error = _text(tuned)
        outputs.append(
            {
                "input": given["messages"][-1]["content"] if given["messages"] else "",
                "source": given["source"],
                "reference": given["reference"],
                "base": base_text,
                "adapter": tuned_text,
                "base_error": base_error,
                "adapter_error": tuned_error,
            }
        )
    base, tuned = scores["base"], scores["adapter"]
    lease.finish(
        AdapterComparison.Status.SUCCEEDED,
        base_loss=base.loss,
        adapter_loss=tuned.loss,
        base_ppl=base.perplexity,
        adapter_ppl=tuned.perplexity,
        eval_rows=tuned.rows,
        eval_tokens=tuned.tokens,
        outputs=outputs,
    )


def _comparison_summary(comparison: AdapterComparison) -> dict[str, Any]:
    return {
        "adapter": comparison.adapter_id,
        "base_loss": comparison.base_loss,
        "adapter_loss": comparison.adapter_loss,
        "eval_rows": comparison.eval_rows,
    }


COMPARISON = jobs.register(
    jobs.JobKind(
        name="comparison",
        label="Comparison",
        model=AdapterComparison,
        task=RUN_TASK,
        queue=queues.Queue.GPU,
        audit_prefix="finetune.comparison",
        run=_run_comparison,
        summary=_comparison_summary,
        url=lambda comparison: reverse(
            "finetune_jobs:comparison",
            kwargs={
                "squad": comparison.squad.slug,
                "adapter_id": comparison.adapter_id,
                "comparison_id": comparison.pk,
            },
        ),
        related=(
            "squad",
            "created_by",
            "adapter__job",
            "adapter__dataset_version__dataset__prompt_version",
        ),
    )
)
