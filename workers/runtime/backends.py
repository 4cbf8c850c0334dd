"""One interface over the local and remote runtimes for the generation services.

`run_conversations` returns one result or one BackendError per conversation, in
order: a row that cannot run (too long for the context, say) fails alone instead
of failing its whole batch.

A `local` target runs on one of two paths, the same for batch jobs, eval runs and the
playground: through the local inference server when STUDIO_LOCAL_SERVER_URL is set
(`make run` sets it; `workers/server`), else in this process. Both decode with the same
continuous-batching loop (`workers.runtime.engine`), which chooses how many rows run
together; the caller's `batch_size` only applies to remote targets.
"""

import os
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from workers.runtime import BackendError, GenerationParams, GenerationResult, StreamDelta

Outcome = GenerationResult | BackendError
LOCAL_SERVER_CONCURRENCY = 64  # requests one worker keeps in flight to the local server
LOCAL_SERVER_TIMEOUT_S = 900.0
Conversation = list[dict[str, str]]
BatchFunction = Callable[[list[Conversation]], list[Outcome]]


@dataclass(frozen=True)
class TargetSpec:
    """What the runtime needs to know about a model target (no Django objects here)."""

    name: str
    kind: str  # "local" or "remote"
    base_model: str = ""
    # local: the registration of base_model the apps expect (its manifest hash)
    base_model_sha256: str = ""
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
    if spec.kind == "local":
        return _run_local(spec, conversations, params, on_progress)
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


def stream_conversation(
    spec: TargetSpec, conversation: Conversation, params: GenerationParams
) -> Iterator[StreamDelta]:
    """One conversation streamed from the target's server (the gateway's `stream: true`):
    a remote target's, or the local inference server for a `local` target. A `local`
    target without STUDIO_LOCAL_SERVER_URL cannot stream from a web process (no torch
    there)."""
    backend = _stream_backend(spec)
    deltas = backend.stream(conversation, params)
    return _refusals_mapped(deltas) if spec.kind == "local" else deltas


def astream_conversation(
    spec: TargetSpec, conversation: Conversation, params: GenerationParams
) -> AsyncIterator[StreamDelta]:
    """`stream_conversation` over an async connection (the gateway under ASGI): a
    stream waiting for the model holds no thread."""
    backend = _stream_backend(spec)
    deltas = backend.astream(conversation, params)
    return _arefusals_mapped(deltas) if spec.kind == "local" else deltas


def _stream_backend(spec: TargetSpec):  # -> RemoteBackend
    from workers.runtime.remote import RemoteBackend

    if spec.kind == "local":
        server = local_server_url()
        if not server:
            raise BackendError(
                "streaming a local target needs the local inference server "
                "(STUDIO_LOCAL_SERVER_URL)",
                retryable=False,
            )
        return local_server_backend(spec, server)
    return RemoteBackend(
        base_url=spec.base_url,
        token_env=spec.token_env or None,
        model=spec.remote_model or None,
        adapter_id=spec.adapter_id or None,
        timeout=spec.timeout,
    )


def local_server_url() -> str:
    """Where the local inference server listens (STUDIO_LOCAL_SERVER_URL), or "" to run
    `local` targets in this process."""
    try:
        from django.conf import settings
        from django.core.exceptions import ImproperlyConfigured
    except ImportError:
        return os.environ.get("STUDIO_LOCAL_SERVER_URL", "")
    try:
        return settings.STUDIO_LOCAL_SERVER_URL
    except (ImproperlyConfigured, AttributeError):  # a bare worker process
        return os.environ.get("STUDIO_LOCAL_SERVER_URL", "")


def local_adapter_id(adapter_dir: str) -> str:
    """The server's `adapter_id` of a trained adapter: its directory relative to the
    server's adapters root, DATA_DIR/finetune."""
    from workers.runtime.local import data_dir

    root = (data_dir() / "finetune").resolve()
    directory = Path(adapter_dir).resolve()
    if not directory.is_relative_to(root):
        raise BackendError(
            f"the adapter in {directory} is outside {root}, the local server's adapters root"
        )
    return str(directory.relative_to(root))


def local_server_backend(spec: TargetSpec, server: str, **retries: float):  # -> RemoteBackend
    """The local inference server as a remote backend for a `local` target: the model by
    its registered name, the adapter by its id under the server's adapters root, and the
    registration the apps expect (`base_model_sha256`), which the server loads the model
    on (first use) and checks the files and the adapter against."""
    from workers.runtime.remote import RemoteBackend

    return RemoteBackend(
        base_url=server,
        model=spec.base_model or "smollm2-135m-instruct",
        adapter_id=local_adapter_id(spec.adapter_dir) if spec.adapter_dir else None,
        extra_body={"base_model_sha256": spec.base_model_sha256}
        if spec.base_model_sha256
        else None,
        # a row may wait in the server's queue behind the rest of its chunk
        timeout=max(spec.timeout, LOCAL_SERVER_TIMEOUT_S),
        **retries,
    )


def local_server_refusal(outcome: Outcome) -> Outcome:
    """The local server's refusal to load a model whose files changed since registration
    (`model_files_changed`) as the ModelFilesChanged an in-process load raises, so the
    apps record it the same way (apps.generation.pipeline.report_changed_models).
    Only for the local server: a remote target's server is not trusted to say so."""
    from workers.runtime.registry import ModelFilesChanged

    detail = getattr(outcome, "detail", None) or {}
    if detail.get("code") != "model_files_changed":
        return outcome
    problems = detail.get("problems")
    if not isinstance(problems, list):
        problems = [str(detail.get("message") or "its files changed")]
    return ModelFilesChanged(
        str(detail.get("model") or ""),
        str(detail.get("manifest_sha256") or ""),
        [str(problem) for problem in problems[:50]],
    )


def _raise_refusal(exc: BackendError) -> None:
    """Re-raise a failed local stream, as ModelFilesChanged when it was that refusal."""
    mapped = local_server_refusal(exc)
    if mapped is exc:
        raise exc
    raise mapped from exc


def _refusals_mapped(deltas: Iterator[StreamDelta]) -> Iterator[StreamDelta]:
    try:
        yield from deltas
    except BackendError as exc:
        _raise_refusal(exc)
    finally:
        deltas.close()


async def _arefusals_mapped(deltas: AsyncIterator[StreamDelta]) -> AsyncIterator[StreamDelta]:
    try:
        async for delta in deltas:
            yield delta
    except BackendError as exc:
        _raise_refusal(exc)
    finally:
        await deltas.aclose()  # type: ignore[attr-defined]


def _run_local(
    spec: TargetSpec,
    conversations: list[Conversation],
    params: GenerationParams,
    on_progress: Callable[[int], None] | None,
) -> list[Outcome]:
    base_model = spec.base_model or "smollm2-135m-instruct"
    server = local_server_url()
    try:
        if server:
            # ride out a restart of the server by its supervisor (about a minute), or a
            # memory budget held by busy models
            backend = local_server_backend(
                spec, server, max_retries=6, backoff_base=1.0, backoff_max=20.0
            )
        elif spec.adapter_dir:
            from workers.runtime.training import load_adapter_model

            model = load_adapter_model(base_model, Path(spec.adapter_dir), spec.base_model_sha256)
        else:
            from workers.runtime.local import load_local_model

            model = load_local_model(base_model, spec.base_model_sha256)
    except BackendError as exc:
        return [exc] * len(conversations)
    if not conversations:
        return []
    if server:
        # Every row in flight at once: the server's decode loop decides how many share a
        # batch, and the rest wait in its queue.
        outcomes = backend.generate_many(
            conversations,
            params,
            concurrency=min(len(conversations), LOCAL_SERVER_CONCURRENCY),
            return_exceptions=True,
        )
        outcomes = [local_server_refusal(outcome) for outcome in outcomes]
        if on_progress is not None:
            on_progress(len(outcomes))
        return outcomes
    return model.generate_many(conversations, params, on_progress=on_progress)


def _batch_function(spec: TargetSpec, params: GenerationParams, batch_size: int) -> BatchFunction:
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
