"""The Prometheus metrics every process records (web workers, Celery workers).

With `PROMETHEUS_MULTIPROC_DIR` set (gunicorn with several workers plus Celery
workers on one machine), prometheus-client writes each process's values to files in
that directory and `/metrics` sums them; it must be set before this module is first
imported (scripts/run.sh exports it). Without it, the default in-process registry.

Labels are bounded: views by their route pattern, never the raw path; prompts by
template slug; targets by name; jobs by kind and outcome.
"""

import structlog
from prometheus_client import Counter, Histogram

logger = structlog.get_logger("studio.jobs")

# Generation and request latencies: from a cached fetch (ms) to a long local generation.
_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)
_JOB_BUCKETS = (1, 5, 15, 30, 60, 120, 300, 600, 1800, 3600, 7200, 14400, 28800)

JOB_KINDS = ("batch", "finetune", "eval", "comparison")

http_request_duration = Histogram(
    "studio_http_request_duration_seconds",
    "Time from the request reaching Django to the response leaving it.",
    ["view", "method", "status"],
    buckets=_LATENCY_BUCKETS,
)
generation_latency = Histogram(
    "studio_generation_latency_seconds",
    "Model time of one finished generation.",
    ["squad", "target", "prompt"],
    buckets=_LATENCY_BUCKETS,
)
generation_tokens = Counter(
    "studio_generation_tokens",
    "Tokens of finished generations, input (prompt) and output (completion).",
    ["squad", "target", "prompt", "direction"],
)
generation_cost = Counter(
    "studio_generation_cost",
    "Cost of finished generations in the targets' price unit.",
    ["squad", "target"],
)
generations = Counter(
    "studio_generations",
    "Finished generations by final status and source.",
    ["status", "source"],
)
job_duration = Histogram(
    "studio_job_duration_seconds",
    "Wall time from a job's start to its end.",
    ["type", "outcome"],
    buckets=_JOB_BUCKETS,
)
jobs = Counter("studio_jobs", "Finished jobs by type and outcome.", ["type", "outcome"])


def job_finished(kind: str, outcome: str, seconds: float) -> None:
    """Record one finished job. `kind` is one of JOB_KINDS; `outcome` is the job's final
    status (succeeded, failed, cancelled, ...). Call once per job, where it finishes;
    a job that never started passes 0 seconds."""
    if kind not in JOB_KINDS:
        raise ValueError(f"unknown job kind {kind!r}; expected one of {', '.join(JOB_KINDS)}")
    jobs.labels(type=kind, outcome=outcome).inc()
    job_duration.labels(type=kind, outcome=outcome).observe(max(seconds, 0.0))
    logger.info("job finished", job_type=kind, outcome=outcome, seconds=round(seconds, 3))


def generation_finished(
    *,
    squad: str,
    prompt: str,
    target: str,
    status: str,
    source: str,
    called_model: bool,
    latency_seconds: float = 0.0,
    input_tokens: int = 0,
    output_tokens: int = 0,
    cost: float = 0.0,
) -> None:
    """Record one finished generation (ok, invalid, failed or blocked). Latency, tokens and
    cost only when a model was called: a generation blocked before the call has none."""
    generations.labels(status=status, source=source).inc()
    if not called_model:
        return
    generation_latency.labels(squad=squad, target=target, prompt=prompt).observe(latency_seconds)
    tokens = generation_tokens.labels
    tokens(squad=squad, target=target, prompt=prompt, direction="input").inc(input_tokens)
    tokens(squad=squad, target=target, prompt=prompt, direction="output").inc(output_tokens)
    generation_cost.labels(squad=squad, target=target).inc(cost)


_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})


def request_finished(*, view: str, method: str, status: int, seconds: float) -> None:
    """Record one HTTP request; `view` is the route pattern (bounded), never the path."""
    method = method if method in _METHODS else "other"
    http_request_duration.labels(view=view, method=method, status=f"{status // 100}xx").observe(
        seconds
    )
