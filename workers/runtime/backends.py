"""One interface over the local and remote runtimes for the generation services.

`run_conversations` returns one result or one BackendError per conversation, in
order: a row that cannot run (too long for the context, say) fails alone instead
of failing its whole batch.
"""

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from workers.runtime import BackendError, GenerationParams, GenerationResult

Outcome = GenerationResult | BackendError
Conversation = list[dict[str, str]]
BatchFunction = Callable[[list[Conversation]], list[Outcome]]


@dataclass(frozen=True)
class TargetSpec:
    """What the runtime needs to know about a model target (no Django objects here)."""

    name: str
    kind: str  # "local" or "remote"
    base_model: str = ""
    base_url: str = ""
    remote_model: str = ""
    token_env: str = ""
    adapter_id: str = ""
    # local: a trained LoRA adapter's directory, loaded on top of base_model
    adapter_dir: str = ""
    timeout: float = 120.0


def run_conversations(
    spec: TargetSpec,
    conversations: list[Conversation],
    params: GenerationParams,
    *,
    batch_size: int = 8,
    on_progress: Callable[[int], None] | None = None,
) -> list[Outcome]:
    try:
        batch = _batch_function(spec, params, batch_size)
    except BackendError as exc:
        return [exc] * len(conversations)
    outcomes: list[Outcome] = []
    for start in range(0, len(conversations), batch_size):
        chunk = conversations[start : start + batch_size]
        try:
            outcomes.extend(batch(chunk))
        except BackendError as exc:
            if len(chunk) == 1 or exc.retryable:
                outcomes.extend([exc] * len(chunk))
            else:
                # Find the row that cannot run; the others still get their answers.
                for conversation in chunk:
                    try:
                        outcomes.extend(batch([conversation]))
                    except BackendError as row_exc:
                        outcomes.append(row_exc)
        if on_progress is not None:
            on_progress(len(outcomes))
    return outcomes


def _batch_function(spec: TargetSpec, params: GenerationParams, batch_size: int) -> BatchFunction:
    if spec.kind == "local":
        base_model = spec.base_model or "smollm2-135m-instruct"
        if spec.adapter_dir:
            from workers.runtime.training import load_adapter_model

            model = load_adapter_model(base_model, Path(spec.adapter_dir))
        else:
            from workers.runtime.local import load_local_model

            model = load_local_model(base_model)

        def local_batch(convs: list[Conversation]) -> list[Outcome]:
            return list(model.generate(convs, params, batch_size=batch_size))

        return local_batch
    if spec.kind == "remote":
        from workers.runtime.remote import RemoteBackend

        backend = RemoteBackend(
            base_url=spec.base_url,
            token_env=spec.token_env or None,
            model=spec.remote_model or None,
            adapter_id=spec.adapter_id or None,
            timeout=spec.timeout,
        )

        def remote_batch(convs: list[Conversation]) -> list[Outcome]:
            return backend.generate_many(
                convs, params, concurrency=min(batch_size, 8), return_exceptions=True
            )

        return remote_batch
    raise BackendError(f"unknown target kind {spec.kind!r}")
