"""Evaluation: test cases per prompt template, eval runs of one version on one model
target over those cases (on the gpu queue, resumable like batch jobs), one result per
case with every assertion's verdict."""

from django.conf import settings
from django.db import models
from django.utils import timezone

from apps.core.models import Job

NAME_MAX = 200


class TestCase(models.Model):
    """Variables to render a template with and what its output must satisfy
    (`apps.evals.assertions`)."""

    __test__ = False  # not a pytest class, whatever its name says

    squad = models.ForeignKey("squads.Squad", on_delete=models.CASCADE, related_name="test_cases")
    template = models.ForeignKey(
        "prompts.PromptTemplate", on_delete=models.CASCADE, related_name="test_cases"
    )
    name = models.CharField(max_length=NAME_MAX)
    variables = models.JSONField(default=dict)
    assertions = models.JSONField(default=list)
    tags = models.JSONField(default=list, blank=True)
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, on_delete=models.SET_NULL, related_name="+"
    )
    created_at = models.DateTimeField(default=timezone.now)
    updated_at = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ["template", "name"]
        constraints = [
            models.UniqueConstraint(fields=["template", "name"], name="test_case_name_unique")
        ]

    def __str__(self) -> str:
        return f"{self.template.slug}: {self.name}"


class EvalRun(Job):
    """One prompt version × one model target × the template's cases (or those with one of
    `tags`), run on the gpu queue under apps.core.jobs' lifecycle. The cases are copied
    into `cases` when the run is created, so a resumed run evaluates exactly what was
    asked for even if the cases are edited meanwhile."""

    version = models.ForeignKey(
        "prompts.PromptVersion", on_delete=models.PROTECT, related_name="eval_runs"
    )
    target = models.ForeignKey(
        "generation.ModelTarget", on_delete=models.PROTECT, related_name="eval_runs"
    )
    tags = models.JSONField(default=list, blank=True)
    # [{"id", "name", "variables", "assertions"}] in run order
    cases = models.JSONField(default=list)
    total = models.PositiveIntegerField(default=0)
    done = models.PositiveIntegerField(default=0)
    passed = models.PositiveIntegerField(default=0)
    failed_count = models.PositiveIntegerField(default=0)
    pass_rate = models.FloatField(null=True, blank=True)
    batch_size = models.PositiveIntegerField(default=8)

    class Meta:
        ordering = ["-created_at", "-pk"]
        indexes = [
            models.Index(fields=["status", "heartbeat_at"], name="eval_run_status_heartbeat"),
            models.Index(fields=["version", "target", "status"], name="eval_run_version_target"),
        ]

    def __str__(self) -> str:
        return f"Eval run {self.pk} ({self.status})"

    @property
    def percent(self) -> int:
        return int(self.done * 100 / self.total) if self.total else 100


class EvalResult(models.Model):
    """One case of one run: the generation, each assertion's verdict, and a copy of the
    case as it was run (the case may be edited or deleted later)."""

    run = models.ForeignKey(EvalRun, on_delete=models.CASCADE, related_name="results")
    case = models.ForeignKey(
        TestCase, null=True, blank=True, on_delete=models.SET_NULL, related_name="results"
    )
    position = models.PositiveIntegerField(help_text="Index of the case in EvalRun.cases")
    case_name = models.CharField(max_length=NAME_MAX)
    variables = models.JSONField(default=dict)
    assertions = models.JSONField(default=list)
    generation = models.ForeignKey(
        "generation.Generation",
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        related_name="eval_results",
    )
    generation_status = models.CharField(max_length=10, blank=True)
    passed = models.BooleanField(default=False)
    # [{"type", "passed", "detail"}], one per assertion (plus one for a case that could
    # not run: variables refused by the version's input schema, or blocked by governance)
    assertion_results = models.JSONField(default=list)
    output = models.TextField(blank=True)
    latency_ms = models.PositiveIntegerField(default=0)
    output_tokens = models.PositiveIntegerField(default=0)
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ["run", "position"]
        constraints = [
            # Idempotent: a resumed run, or a second worker, never writes a case twice.
            models.UniqueConstraint(fields=["run", "case"], name="eval_result_one_per_case"),
            models.UniqueConstraint(
                fields=["run", "position"], name="eval_result_one_per_position"
            ),
        ]

    def __str__(self) -> str:
        return f"{self.case_name} ({'pass' if self.passed else 'fail'})"

    @property
    def failing(self) -> list[dict]:
        return [a for a in self.assertion_results if not a.get("passed")]
