"""HTML views for fine-tune jobs and adapters: the job list with the start form, a job's
page (progress and loss chart polled by htmx while it runs, log, cancel), an adapter's
page (approve, attach to or detach from a local target, download, start a comparison)
and a comparison's page (polled by htmx until done). Each view parses the request,
calls the service or selector the API calls, and renders the page or one of its
partials."""

from dataclasses import fields
from typing import Any

from django.contrib.auth.decorators import login_required
from django.http import FileResponse, HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.views.decorators.http import require_GET, require_http_methods, require_POST

from apps.basemodels.selectors import ready_names
from apps.core.exceptions import ApplicationError, ValidationFailed
from apps.core.http import parse_id
from apps.core.views import form_error
from apps.finetune import charts, jobs, preflight, selectors
from apps.finetune import comparisons as comparisons_service
from apps.finetune.models import Adapter, DatasetVersion, FineTuneJob
from apps.generation import selectors as generation_selectors
from apps.generation.models import ModelTarget
from apps.squads.access import has_squad_permission
from apps.squads.models import Squad
from apps.squads.permissions import APPROVE_ADAPTERS, MANAGE_TARGETS, RUN_FINETUNE
from apps.squads.selectors import squad_get_for_user

LORA_FIELDS = ("r", "alpha", "dropout")
TRAIN_FIELDS = ("learning_rate", "epochs", "max_steps", "batch_size", "grad_accum")
TRAIN_FIELDS += ("max_seq_len", "seed", "eval_every")
FLAG_FIELDS = ("gradient_checkpointing",)
FORM_FIELDS = (
    "dataset",
    "version",
    "target",
    "base_model",
    "devices",
    "target_modules",
    *LORA_FIELDS,
    *TRAIN_FIELDS,
    *FLAG_FIELDS,
)
INTEGER_FIELDS = {
    "r",
    "alpha",
    "max_steps",
    "batch_size",
    "grad_accum",
    "max_seq_len",
    "seed",
    "eval_every",
    "version",
    "devices",
}


def _value(form: dict[str, str], name: str) -> int | float | None:
    raw = form.get(name, "").strip()
    if not raw:
        return None
    try:
        return int(raw) if name in INTEGER_FIELDS else float(raw)
    except ValueError:
        section = "lora." if name in LORA_FIELDS else "train." if name in TRAIN_FIELDS else ""
        raise ValidationFailed(
            f"{name.replace('_', ' ').capitalize()} must be a number (got '{raw}').",
            field=f"{section}{name}",
        ) from None


def _list_context(
    request: HttpRequest,
    squad: Squad,
    form: dict[str, str],
    error: ApplicationError | None,
    *,
    plan: preflight.Plan | None = None,
    plan_error: ApplicationError | None = None,
) -> dict[str, Any]:
    can_run = has_squad_permission(request.user, squad, RUN_FINETUNE)
    context: dict[str, Any] = {
        "squad": squad,
        "jobs": selectors.finetune_job_list_for_user(user=request.user, squad=squad)[:100],
        "adapters": selectors.adapter_list_for_user(user=request.user, squad=squad)[:100],
        "can_run": can_run,
        "form": form,
        "error": error,
        **_plan_context(plan, plan_error),
    }
    if can_run:
        context["base_models"] = ready_names()
        context["datasets"] = selectors.dataset_list_for_user(
            user=request.user, squad=squad
        ).filter(latest_version__isnull=False)
    return context


def _settings(
    request: HttpRequest, squad: Squad, form: dict[str, str]
) -> tuple[DatasetVersion, dict[str, Any], dict[str, Any]]:
    """The dataset version and the LoRA and training settings the form asks for (empty
    fields left to the runtime's defaults)."""
    dataset = selectors.dataset_get_for_user(user=request.user, squad=squad, slug=form["dataset"])
    number = _value(form, "version") or (
        dataset.latest_version.number if dataset.latest_version else 0
    )
    version = selectors.dataset_version_get(user=request.user, dataset=dataset, number=number)
    modules = [m.strip() for m in form["target_modules"].split(",") if m.strip()]
    lora: dict[str, Any] = {name: _value(form, name) for name in LORA_FIELDS}
    lora["target_modules"] = modules or None
    train = {name: _value(form, name) for name in TRAIN_FIELDS}
    for name in FLAG_FIELDS:
        train[name] = True if form.get(name) else None
    return (
        version,
        {k: v for k, v in lora.items() if v is not None},
        {k: v for k, v in train.items() if v is not None},
    )


def _create(request: HttpRequest, squad: Squad, form: dict[str, str]) -> FineTuneJob:
    version, lora, train = _settings(request, squad, form)
    return jobs.finetune_job_create(
        actor=request.user,
        dataset_version=version,
        target_name=form["target"] or None,
        base_model=form.get("base_model") or None,
        lora=lora,
        train=train,
        devices=_value(form, "devices"),
        request=request,
    )


def _plan(
    request: HttpRequest, squad: Squad, form: dict[str, str]
) -> tuple[preflight.Plan | None, ApplicationError | None]:
    """The pre-flight of the form's job, or why it cannot run."""
    if not form.get("dataset"):
        return None, None
    try:
        version, lora, train = _settings(request, squad, form)
        plan = preflight.finetune_plan(
            actor=request.user,
            dataset_version=version,
            target_name=form["target"] or None,
            base_model=form.get("base_model") or None,
            lora=lora,
            train=train,
            devices=_value(form, "devices"),
        )
    except ApplicationError as exc:
        return None, form_error(exc)
    return plan, None


def _plan_context(
    plan: preflight.Plan | None, plan_error: ApplicationError | None
) -> dict[str, Any]:
    return {
        "plan": plan,
        "plan_error": plan_error,
        "plan_eta": _duration(plan.seconds) if plan else "",
    }


def _form_from_job(job: FineTuneJob) -> dict[str, str]:
    """The start form filled with a job's dataset, target and settings ("clone"); a
    setting at the runtime's default stays empty, as when the job was started."""
    from workers.runtime.training import LoraSettings, TrainSettings

    defaults = {f.name: f.default for cls in (LoraSettings, TrainSettings) for f in fields(cls)}
    chosen = {k: v for k, v in {**job.lora, **job.train}.items() if v != defaults.get(k)}
    form = {name: "" if chosen.get(name) is None else str(chosen[name]) for name in FORM_FIELDS}
    modules = job.lora.get("target_modules") or []
    if job.base_model != job.target.base_model:
        form["base_model"] = job.base_model
    if form.get("gradient_checkpointing") == "False":
        form["gradient_checkpointing"] = ""
    if job.devices != 1:
        form["devices"] = str(job.devices)
    return form | {
        "dataset": job.dataset_version.dataset.slug,
        "version": str(job.dataset_version.number),
        "target": job.target.name,
        "target_modules": ", ".join(modules),
    }


def _initial_form(request: HttpRequest, squad: Squad) -> dict[str, str]:
    """Empty (the runtime's defaults), a dataset version picked by ?dataset=&version=, or a
    copy of job ?clone=."""
    form = dict.fromkeys(FORM_FIELDS, "") | {"target": jobs.DEFAULT_TARGET}
    clone = parse_id(request.GET.get("clone"))
    if clone is not None:
        job = selectors.finetune_job_get_for_user(user=request.user, squad=squad, job_id=clone)
        return _form_from_job(job)
    form["dataset"] = request.GET.get("dataset", "").strip()
    form["version"] = request.GET.get("version", "").strip()
    return form


@login_required
@require_http_methods(["GET", "POST"])
def job_list(request: HttpRequest, squad: str) -> HttpResponse:
    """The squad's fine-tune jobs and adapters and, for those who may, the start form
    with its pre-flight (POST action=check shows it without starting the job)."""
    squad_obj = squad_get_for_user(user=request.user, slug=squad)
    if request.method == "GET":
        form = _initial_form(request, squad_obj)
        context = _list_context(request, squad_obj, form, None)
        if context["can_run"]:
            if not form["dataset"] and context["datasets"]:
                form["dataset"] = context["datasets"][0].slug
            context.update(_plan_context(*_plan(request, squad_obj, form)))
        return render(request, "finetune/job_list.html", context)
    form = {name: request.POST.get(name, "").strip() for name in FORM_FIELDS}
    if request.POST.get("action") == "check":
        plan, plan_error = _plan(request, squad_obj, form)
        context = _list_context(request, squad_obj, form, None, plan=plan, plan_error=plan_error)
        status = plan_error.status_code if plan_error else 200
        return render(request, "finetune/job_list.html", context, status=status)
    try:
        job = _create(request, squad_obj, form)
    except ApplicationError as exc:
        plan, plan_error = _plan(request, squad_obj, form)
        context = _list_context(
            request, squad_obj, form, form_error(exc), plan=plan, plan_error=plan_error
        )
        return render(request, "finetune/job_list.html", context, status=exc.status_code)
    return redirect("finetune_jobs:detail", squad=squad, job_id=job.pk)


@login_required
@require_POST
def job_preflight(request: HttpRequest, squad: str) -> HttpResponse:
    """The start form's pre-flight panel, refreshed by htmx as the form changes."""
    squad_obj = squad_get_for_user(user=request.user, slug=squad)
    form = {name: request.POST.get(name, "").strip() for name in FORM_FIELDS}
    plan, plan_error = _plan(request, squad_obj, form)
    context = {"squad": squad_obj, "form": form, **_plan_context(plan, plan_error)}
    status = plan_error.status_code if plan_error else 200
    return render(request, "finetune/job_list.html#preflight", context, status=status)


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "—"
    seconds = int(seconds)
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}h {minutes:02d}m" if hours else f"{minutes}m {secs:02d}s"


def _progress_context(request: HttpRequest, squad: Squad, job: FineTuneJob) -> dict[str, Any]:
    total = job.total_steps or 0
    return {
        "squad": squad,
        "job": job,
        "percent": job.step * 100 // total if total else 0,
        "eta": _duration(job.eta_seconds) if not job.finished else "—",
        "chart": charts.loss_chart(
            points=job.points,
            total_steps=job.total_steps,
            checkpoint_every=job.train.get("checkpoint_every"),
        ),
        "can_run": has_squad_permission(request.user, squad, RUN_FINETUNE),
        "adapter": getattr(job, "adapter", None)
        if job.status == FineTuneJob.Status.SUCCEEDED
        else None,
    }


@login_required
@require_GET
def job_detail(request: HttpRequest, squad: str, job_id: int) -> HttpResponse:
    """Settings, live progress with the loss chart (polled every 2 s while the job runs)
    and the log."""
    squad_obj = squad_get_for_user(user=request.user, slug=squad)
    job = selectors.finetune_job_get_for_user(user=request.user, squad=squad_obj, job_id=job_id)
    context = _progress_context(request, squad_obj, job)
    target = request.htmx.target if request.htmx else None
    if target == "progress":
        return render(request, "finetune/job_detail.html#progress", context)
    context["log"] = selectors.finetune_job_log(user=request.user, job=job)
    if target == "log":
        return render(request, "finetune/job_detail.html#log", context)
    return render(request, "finetune/job_detail.html", context)


@login_required
@require_POST
def job_cancel(request: HttpRequest, squad: str, job_id: int) -> HttpResponse:
    squad_obj = squad_get_for_user(user=request.user, slug=squad)
    job = selectors.finetune_job_get_for_user(user=request.user, squad=squad_obj, job_id=job_id)
    try:
        jobs.finetune_job_cancel(actor=request.user, job=job, request=request)
    except ApplicationError as exc:
        if not request.htmx:
            raise
        context = {**_progress_context(request, squad_obj, job), "cancel_error": form_error(exc)}
        return render(request, "finetune/job_detail.html#progress", context, status=exc.status_code)
    if not request.htmx:
        return redirect("finetune_jobs:detail", squad=squad, job_id=job.pk)
    job = selectors.finetune_job_get_for_user(user=request.user, squad=squad_obj, job_id=job_id)
    return render(
        request, "finetune/job_detail.html#progress", _progress_context(request, squad_obj, job)
    )


def _adapter_context(
    request: HttpRequest, squad: Squad, adapter: Adapter, **extra: Any
) -> dict[str, Any]:
    user = request.user
    can_attach = has_squad_permission(user, squad, MANAGE_TARGETS)
    own_local = generation_selectors.model_target_list_for_user(user=user, squad=squad).filter(
        squad=squad, kind=ModelTarget.Kind.LOCAL
    )
    attached = [t for t in own_local if t.lora_adapter_id == adapter.pk]
    attachable = [
        t
        for t in own_local
        if t.base_model == adapter.base_model and t.lora_adapter_id != adapter.pk
    ]
    comparisons = selectors.adapter_comparison_list_for_user(user=user, adapter=adapter)
    return {
        "squad": squad,
        "adapter": adapter,
        "error": None,
        "can_approve": has_squad_permission(user, squad, APPROVE_ADAPTERS),
        "can_attach": can_attach,
        "can_compare": has_squad_permission(user, squad, RUN_FINETUNE),
        "attached": attached,
        "attachable": attachable,
        "comparisons": comparisons[:20],
        "compare_form": {
            "prompts": "",
            "eval_rows": "",
            **{k: str(v) for k, v in comparisons_service.DEFAULT_PARAMS.items()},
        },
        "max_inputs": comparisons_service.MAX_INPUTS,
        "formats": selectors.ARCHIVE_FORMATS,
        **extra,
    }


def _adapter_page(request: HttpRequest, squad: Squad, adapter: Adapter, **extra: Any):
    context = _adapter_context(request, squad, adapter, **extra)
    error = context["error"] or context.get("compare_error")
    status = error.status_code if error else 200
    return render(request, "finetune/adapter_detail.html", context, status=status)


def _adapter_for(request: HttpRequest, squad: str, adapter_id: int) -> tuple[Squad, Adapter]:
    squad_obj = squad_get_for_user(user=request.user, slug=squad)
    adapter = selectors.adapter_get_for_user(
        user=request.user, squad=squad_obj, adapter_id=adapter_id
    )
    return squad_obj, adapter


@login_required
@require_http_methods(["GET", "POST"])
def adapter_detail(request: HttpRequest, squad: str, adapter_id: int) -> HttpResponse:
    """An adapter's hashes, lineage, metrics and approval, the targets it is on, its
    comparisons with the base model; POST approves it."""
    squad_obj, adapter = _adapter_for(request, squad, adapter_id)
    if request.method == "POST":
        try:
            jobs.adapter_approve(actor=request.user, adapter=adapter, request=request)
        except ApplicationError as exc:
            return _adapter_page(request, squad_obj, adapter, error=form_error(exc))
        return redirect("finetune_jobs:adapter", squad=squad, adapter_id=adapter.pk)
    return _adapter_page(request, squad_obj, adapter)


def _own_target(request: HttpRequest, squad: Squad, name: str) -> ModelTarget:
    target = (
        generation_selectors.model_target_list_for_user(user=request.user, squad=squad)
        .filter(squad=squad, name=name)
        .first()
    )
    if target is None:
        raise ValidationFailed(
            f"Squad '{squad.slug}' has no model target '{name}'." if name else "Choose a target.",
            field="target",
        )
    return target


@login_required
@require_POST
def adapter_attach(request: HttpRequest, squad: str, adapter_id: int) -> HttpResponse:
    """Put the adapter on one of the squad's own local targets (POST `target`), or take
    it off (`detach=1`): the service the API's PUT targets/<name>/adapter calls."""
    squad_obj, adapter = _adapter_for(request, squad, adapter_id)
    name = request.POST.get("target", "").strip()
    detach = request.POST.get("detach") == "1"
    try:
        target = _own_target(request, squad_obj, name)
        if detach and target.lora_adapter_id != adapter.pk:
            raise ValidationFailed(
                f"Adapter {adapter.pk} is not on target '{target.name}'.", field="target"
            )
        jobs.model_target_set_adapter(
            actor=request.user,
            target=target,
            adapter=None if detach else adapter,
            request=request,
        )
    except ApplicationError as exc:
        return _adapter_page(request, squad_obj, adapter, error=form_error(exc))
    return redirect("finetune_jobs:adapter", squad=squad, adapter_id=adapter.pk)


def _row_numbers(raw: str) -> list[int]:
    numbers = []
    for i, part in enumerate(p.strip() for p in raw.replace(",", " ").split()):
        try:
            numbers.append(int(part))
        except ValueError:
            raise ValidationFailed(
                f"Eval rows must be row numbers separated by commas (got '{part}').",
                field=f"eval_rows[{i}]",
            ) from None
    return numbers


@login_required
@require_POST
def comparison_create(request: HttpRequest, squad: str, adapter_id: int) -> HttpResponse:
    """Queue a comparison with the base model: prompts one per line, eval rows by number,
    the generation parameters (both models get the same)."""
    squad_obj, adapter = _adapter_for(request, squad, adapter_id)
    form = {
        name: request.POST.get(name, "").strip()
        for name in ("prompts", "eval_rows", *comparisons_service.DEFAULT_PARAMS)
    }
    try:
        params: dict[str, Any] = {}
        for name, (kind, _, _) in comparisons_service.PARAM_LIMITS.items():
            if form[name]:
                try:
                    params[name] = kind(form[name])
                except ValueError:
                    raise ValidationFailed(
                        f"{name.replace('_', ' ').capitalize()} must be a number "
                        f"(got '{form[name]}').",
                        field=f"params.{name}",
                    ) from None
        comparison = comparisons_service.adapter_comparison_create(
            actor=request.user,
            adapter=adapter,
            prompts=[line for line in form["prompts"].splitlines() if line.strip()],
            eval_rows=_row_numbers(form["eval_rows"]),
            params=params,
            request=request,
        )
    except ApplicationError as exc:
        return _adapter_page(
            request, squad_obj, adapter, compare_error=form_error(exc), compare_form=form
        )
    return redirect(
        "finetune_jobs:comparison", squad=squad, adapter_id=adapter.pk, comparison_id=comparison.pk
    )


@login_required
@require_GET
def comparison_detail(
    request: HttpRequest, squad: str, adapter_id: int, comparison_id: int
) -> HttpResponse:
    """Loss and perplexity of base and adapter with their deltas, and the side-by-side
    outputs; polled every 2 s by htmx until the comparison has finished."""
    squad_obj, adapter = _adapter_for(request, squad, adapter_id)
    comparison = selectors.adapter_comparison_get_for_user(
        user=request.user, adapter=adapter, comparison_id=comparison_id
    )
    context = {"squad": squad_obj, "adapter": adapter, "comparison": comparison}
    if request.htmx and request.htmx.target == "comparison":
        return render(request, "finetune/comparison_detail.html#comparison", context)
    return render(request, "finetune/comparison_detail.html", context)


@login_required
@require_GET
def adapter_download(request: HttpRequest, squad: str, adapter_id: int, fmt: str) -> FileResponse:
    squad_obj = squad_get_for_user(user=request.user, slug=squad)
    adapter = selectors.adapter_get_for_user(
        user=request.user, squad=squad_obj, adapter_id=adapter_id
    )
    archive = selectors.adapter_archive(user=request.user, adapter=adapter, fmt=fmt)
    return FileResponse(archive, as_attachment=True, filename=f"adapter-{adapter.pk}.{fmt}")
