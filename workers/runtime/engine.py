"""Continuous batching over one causal LM: the decode loop that the local inference server
and in-process batch jobs share.

Every step decodes one token for every running sequence in one forward pass. A sequence
that finishes (EOS, its own `max_new_tokens`, one of its own stop strings, or cancelled)
leaves the batch at once; in the same step waiting sequences are prefilled into the room
it left, and they decode with the others from the next step: as many as the memory budget
allows for their prompt plus `max_new_tokens` (the batch size is chosen here, from memory
and sequence lengths, not fixed by the caller).

The batch is a left-padded tensor batch over one transformers `DynamicCache`: rows are
right-aligned, so every row appends its next token in the same column; joining rows are
left-padded to the batch's width (or the batch to theirs), leaving rows are dropped with
`batch_select_indices`, and columns that are padding for every remaining row are cut.
Positions come from each row's own length, so a row sees what it would see alone (up to
float rounding of padded batches, which could flip a near-tie between two tokens).

Prompt starts shared between requests (a chat template's system prompt, a prompt
version's fixed instructions) are prefilled once: the engine remembers recent prompts,
and when a joining prompt starts with at least PREFIX_MIN_TOKENS tokens that another one
started with, the KV of that start is computed once (per adapter) and kept (LRU,
PREFIX_ENTRIES); rows that start with it copy it and prefill only the rest. Their cache
row is [shared start][padding][rest]: positions still count real tokens only.

Per request: temperature (0 = greedy), top_p, seed (a private torch.Generator, so a seeded
row draws the same tokens whatever else shares its batch), stop strings (checked on the
generated text only) and, on a peft model, the LoRA adapter (peft's mixed-adapter batches:
`adapter_names` per row, "__base__" for none).

transformers 5.x ships its own continuous batching (`generate_batch`,
`ContinuousBatchingManager`, `transformers serve`); docs/architecture.md says why this
module does not use it. torch is imported inside functions only.
"""

from __future__ import annotations

import itertools
import logging
import os
import queue
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from workers.runtime import BackendError, GenerationParams, GenerationResult

logger = logging.getLogger(__name__)
BASE_ADAPTER = "__base__"  # peft's name for "no adapter" in a mixed batch
DEFAULT_MAX_ROWS = {"cpu": 64, "cuda": 256}
PREFILL_TOKENS_PER_STEP = 2048  # joining prompts prefilled in one step, at most
PREFIX_MIN_TOKENS = 16  # a shared prompt start shorter than this is prefilled with each row
PREFIX_ENTRIES = 16  # prompt starts whose KV the engine keeps (least recently used goes)
RECENT_PROMPTS = 64  # prompts remembered to find a shared start in


@dataclass
class Sequence:
    """One request in the engine. `events` receives ("text", delta) while it runs (when
    streaming) and finally ("done", GenerationResult | BackendError)."""

    prompt: list[int]
    params: GenerationParams
    adapter: str | None = None
    stream: bool = False
    id: int = field(default_factory=itertools.count().__next__)
    events: queue.SimpleQueue = field(default_factory=queue.SimpleQueue)
    tokens: list[int] = field(default_factory=list)
    sent: int = 0  # characters of the text already streamed
    cancelled: bool = False
    outcome: GenerationResult | BackendError | None = None
    generator: Any = None
    finished: tuple[str, str] | None = None  # (text, finish reason), until retired

    @property
    def reserved(self) -> int:
        """The tokens this row may occupy in the cache by the time it finishes."""
        return len(self.prompt) + self.params.max_new_tokens

    def result(self, timeout: float | None = None) -> GenerationResult | BackendError:
        """Block until done (skipping streamed text); the outcome."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            left = None if deadline is None else max(0.0, deadline - time.monotonic())
            kind, value = self.events.get(timeout=left)
            if kind == "done":
                return value


class Engine:
    """Continuous batching over `local` (a workers.runtime.local.LocalModel).

    Use it either from one thread (`run(sequences)`: batch jobs) or as a service
    (`start()`, then `submit()` from any thread: the server). `kv_budget_bytes` caps the
    KV cache of the whole batch (default: from free memory); `max_rows` caps the rows
    decoded together (default 64 on CPU, 256 on CUDA).
    """

    def __init__(
        self, local: Any, *, kv_budget_bytes: int | None = None, max_rows: int | None = None
    ) -> None:
        self.local = local
        self.model = local.model
        self.tokenizer = local.tokenizer
        self.device = local.device
        config = self.model.config
        text = config.get_text_config(decoder=True)
        heads = text.num_attention_heads
        kv_heads = getattr(text, "num_key_value_heads", None) or heads
        head_dim = getattr(text, "head_dim", None) or text.hidden_size // heads
        self.bytes_per_token = (
            2 * text.num_hidden_layers * kv_heads * head_dim * self.local.dtype.itemsize
        )
        self.kv_budget = kv_budget_bytes or default_kv_budget(self.device)
        self.max_rows = max_rows or DEFAULT_MAX_ROWS.get(self.device.type, 64)
        self.waiting: deque[Sequence] = deque()
        self.running: list[Sequence] = []
        self.cache: Any = None
        self.mask: Any = None  # [rows, width] 1 for real tokens, 0 for padding
        self.lock = threading.Lock()  # held for each step and for loading adapters
        self.wake = threading.Condition()
        self.thread: threading.Thread | None = None
        self.stopping = False
        self.steps = 0
        self.peak_rows = 0
        # Adapters loaded here run per row (peft's adapter_names). A model that arrives
        # already wrapped in peft (load it with its adapter active) runs as it is.
        self.mixed_adapters = False
        # (adapter, prompt start) -> the start's KV per layer (batch of one), LRU order
        self.prefixes: OrderedDict[tuple[str | None, tuple[int, ...]], list[tuple[Any, Any]]] = (
            OrderedDict()
        )
        self.recent: deque[tuple[str | None, list[int]]] = deque(maxlen=RECENT_PROMPTS)
        self.prefix_hits = 0  # rows that skipped a shared start (tests, metrics)

    # -- admission ----------------------------------------------------------------------

    def check(self, sequence: Sequence) -> BackendError | None:
        """Why `sequence` can never run here, or None."""
        if sequence.reserved > self.local.context_length:
            return BackendError(
                f"prompt of {len(sequence.prompt)} tokens + max_new_tokens "
                f"{sequence.params.max_new_tokens} exceeds the context window of "
                f"{self.local.context_length} tokens"
            )
        if sequence.reserved * self.bytes_per_token > self.kv_budget:
            return BackendError(
                f"prompt of {len(sequence.prompt)} tokens + max_new_tokens "
                f"{sequence.params.max_new_tokens} needs more memory than the KV-cache "
                f"budget of {self.kv_budget // 2**20} MiB"
            )
        if sequence.adapter and not self.has_adapter(sequence.adapter):
            return BackendError(f"adapter {sequence.adapter!r} is not loaded")
        return None

    def submit(self, sequence: Sequence) -> Sequence:
        """Queue `sequence` (any thread); it joins the batch at the next step. A sequence
        that can never run is finished at once with its BackendError."""
        problem = self.check(sequence)
        if problem is not None:
            self._finish(sequence, problem)
            return sequence
        with self.wake:
            self.waiting.append(sequence)
            self.wake.notify()
        return sequence

    def cancel(self, sequence: Sequence) -> None:
        """Free `sequence`'s slot at the next step (a client that went away)."""
        sequence.cancelled = True

    def _fits(self, rows: list[Sequence]) -> bool:
        """Whether `rows` decoded together stay within the KV budget until the longest
        finishes: the batch is as wide as its longest row, so every row costs that width."""
        if len(rows) > self.max_rows:
            return False
        width = max(row.reserved for row in rows)
        return len(rows) * width * self.bytes_per_token <= self.kv_budget

    def _admit(self) -> list[Sequence]:
        joining: list[Sequence] = []
        prefill = 0
        with self.wake:
            while self.waiting:
                candidate = self.waiting[0]
                if candidate.cancelled:
                    self.waiting.popleft()
                    self._finish(candidate, BackendError("cancelled"))
                    continue
                if joining and prefill + len(candidate.prompt) > PREFILL_TOKENS_PER_STEP:
                    break
                if (self.running or joining) and not self._fits(
                    [*self.running, *joining, candidate]
                ):
                    break
                joining.append(self.waiting.popleft())
                prefill += len(candidate.prompt)
        return joining

    # -- the loop -----------------------------------------------------------------------

    def run(
        self,
        sequences: list[Sequence],
        on_done: Callable[[Sequence], None] | None = None,
    ) -> list[GenerationResult | BackendError]:
        """Run `sequences` to the end in this thread (no service thread may be running);
        outcomes in input order. `on_done(sequence)` after each finishes."""
        for sequence in sequences:
            self.submit(sequence)
        done: set[int] = set()
        while True:
            for sequence in sequences:
                if sequence.outcome is not None and sequence.id not in done:
                    done.add(sequence.id)
                    if on_done is not None:
                        on_done(sequence)
            if len(done) == len(sequences):
                break
            self.step()
        return [sequence.outcome for sequence in sequences]  # type: ignore[misc]

    def start(self) -> None:
        """Run the loop in a daemon thread; `submit()` from any thread."""
        self.thread = threading.Thread(target=self._serve, name="decode-loop", daemon=True)
        self.thread.start()

    def stop(self) -> None:
        with self.wake:
            self.stopping = True
            self.wake.notify()
        if self.thread is not None:
            self.thread.join(timeout=30)

    def _serve(self) -> None:
        while True:
            with self.wake:
                while not self.waiting and not self.running and not self.stopping:
                    self.wake.wait()
                if self.stopping:
                    return
            try:
                self.step()
            except Exception:  # its rows have failed; the loop serves the next ones
                logger.exception("decode loop step failed")

    def step(self) -> None:
        """Decode one token for every running row and retire the finished ones, then
        admit and prefill waiting rows (they decode with the others from the next step)."""
        import torch

        with self.lock, torch.inference_mode():
            self._drop([row for row in self.running if row.cancelled], "cancelled")
            joining: list[Sequence] = []
            try:
                if self.running:
                    self._decode()
                # Rows that just finished freed their room: waiting rows join now.
                joining = self._admit()
                for group, start in self._by_prefix(joining):
                    logits = self._prefill(group, start)
                    self._next_tokens(group, logits)
                    self.running.extend(group)
                if joining:
                    self._retire()
            except Exception as exc:
                # Every row of this step fails: none is left waiting on a broken batch.
                rows = self.running + [row for row in joining if row not in self.running]
                if not (isinstance(exc, RuntimeError) and is_out_of_memory(exc)):
                    failure = f"the decode loop failed: {type(exc).__name__}: {exc}"
                    self._reset(rows, BackendError(failure))
                    raise
                self._reset(
                    rows,
                    BackendError(
                        f"out of memory on {self.device} decoding {len(rows)} rows; "
                        "lower the KV-cache budget (STUDIO_LOCAL_KV_BUDGET_MB) or max_new_tokens"
                    ),
                )
                if self.device.type == "cuda":
                    torch.cuda.empty_cache()
            self.steps += 1
            self.peak_rows = max(self.peak_rows, len(self.running))

    def _forward(self, input_ids, mask, positions, cache, rows: list[Sequence]):
        kwargs: dict[str, Any] = {}
        if self.mixed_adapters:
            kwargs["adapter_names"] = [row.adapter or BASE_ADAPTER for row in rows]
        output = self.model(
            input_ids=input_ids,
            attention_mask=mask,
            position_ids=positions,
            cache=cache,
            use_cache=True,
            logits_to_keep=1,
            **kwargs,
        )
        return output.logits[:, -1, :], output.cache

    def _by_prefix(self, joining: list[Sequence]) -> list[tuple[list[Sequence], tuple[int, ...]]]:
        """`joining` in groups that share a known prompt start (the empty start: none),
        in the order they are prefilled and join the batch."""
        groups: dict[tuple[str | None, tuple[int, ...]], list[Sequence]] = {}
        for row in joining:
            start = self._known_start(row, joining)
            groups.setdefault((row.adapter, start), []).append(row)
            self.recent.append((row.adapter, row.prompt))
        return [(rows, start) for (_, start), rows in groups.items()]

    def _known_start(self, row: Sequence, joining: list[Sequence]) -> tuple[int, ...]:
        """The longest prompt start of `row` whose KV is kept, or which it shares with a
        recent or joining prompt of the same adapter (then kept from now on); () if none
        is PREFIX_MIN_TOKENS long. At least one token of the prompt is left to prefill."""
        prompt, limit = row.prompt, len(row.prompt) - 1
        best: tuple[int, ...] = ()
        for adapter, start in self.prefixes:
            if (
                adapter == row.adapter
                and len(best) < len(start) <= limit
                and tuple(prompt[: len(start)]) == start
            ):
                best = start
        if best:
            self.prefixes.move_to_end((row.adapter, best))
            return best
        shared = 0
        others = [(other.adapter, other.prompt) for other in joining if other is not row]
        for adapter, other in [*self.recent, *others]:
            if adapter != row.adapter or other is prompt:
                continue
            length = _common_length(prompt, other, limit)
            shared = max(shared, length)
        if shared < PREFIX_MIN_TOKENS:
            return ()
        start = tuple(prompt[:shared])
        if len(start) * self.bytes_per_token > self.kv_budget // (2 * PREFIX_ENTRIES):
            return ()  # too long to keep: prefilled with each row
        self.prefixes[(row.adapter, start)] = []  # computed when its group is prefilled
        while len(self.prefixes) > PREFIX_ENTRIES:
            self.prefixes.popitem(last=False)
        return start

    def _start_cache(self, rows: list[Sequence], start: tuple[int, ...]):
        """A cache holding the KV of `start` for every row of `rows` (computing and
        keeping it, batch of one, the first time)."""
        import torch
        from transformers import DynamicCache

        key = (rows[0].adapter, start)
        kept = self.prefixes.get(key)
        if not kept:
            ids = torch.tensor([list(start)], device=self.device)
            mask = torch.ones_like(ids)
            positions = torch.arange(len(start), device=self.device)[None, :]
            _, cache = self._forward(ids, mask, positions, None, rows[:1])
            kept = [(layer.keys, layer.values) for layer in cache.layers]
            self.prefixes[key] = kept
        cache = DynamicCache(config=self.model.config)
        for index, (keys, values) in enumerate(kept):
            shape = (len(rows), *keys.shape[1:])
            cache.update(keys.expand(shape).contiguous(), values.expand(shape).contiguous(), index)
        return cache

    def _prefill(self, joining: list[Sequence], start: tuple[int, ...] = ()):
        """Run the joining prompts (left-padded among themselves, after their shared
        `start` whose KV is copied in), then merge their cache into the batch's. Returns
        their next-token logits."""
        import torch
        import torch.nn.functional as F

        skip = len(start)
        rests = [row.prompt[skip:] for row in joining]
        width = max(len(rest) for rest in rests)
        pad = self.tokenizer.pad_token_id
        ids = torch.tensor(
            [[pad] * (width - len(rest)) + rest for rest in rests], device=self.device
        )
        mask = torch.tensor(
            [[1] * skip + [0] * (width - len(rest)) + [1] * len(rest) for rest in rests],
            device=self.device,
        )
        positions = (mask.cumsum(-1) - 1).clamp(min=0)[:, skip:]
        cache = self._start_cache(joining, start) if start else None
        logits, cache = self._forward(ids, mask, positions, cache, joining)
        if start:
            self.prefix_hits += len(joining)
        width += skip
        if self.cache is None:
            self.cache, self.mask = cache, mask
            return logits
        old, new = self.mask.shape[1], width
        total = max(old, new)
        for layer, joined in zip(self.cache.layers, cache.layers, strict=True):
            layer.keys = torch.cat(
                [
                    F.pad(layer.keys, (0, 0, total - old, 0)),
                    F.pad(joined.keys, (0, 0, total - new, 0)),
                ]
            )
            layer.values = torch.cat(
                [
                    F.pad(layer.values, (0, 0, total - old, 0)),
                    F.pad(joined.values, (0, 0, total - new, 0)),
                ]
            )
        self.mask = torch.cat([F.pad(self.mask, (total - old, 0)), F.pad(mask, (total - new, 0))])
        return logits

    def _decode(self) -> None:
        import torch

        last = torch.tensor([[row.tokens[-1]] for row in self.running], device=self.device)
        self.mask = torch.cat([self.mask, self.mask.new_ones((len(self.running), 1))], dim=1)
        positions = (self.mask.sum(-1, keepdim=True) - 1).clamp(min=0)
        logits, self.cache = self._forward(last, self.mask, positions, self.cache, self.running)
        self._next_tokens(self.running, logits)
        self._retire()

    def _next_tokens(self, rows: list[Sequence], logits) -> None:
        """Pick each row's next token (its own temperature, top_p and generator), append
        it, stream new text, and mark finished rows."""
        import torch

        logits = logits.float()
        greedy = logits.argmax(dim=-1).tolist()
        for index, row in enumerate(rows):
            if row.params.temperature > 0:
                token = _sample(logits[index], row, torch)
            else:
                token = greedy[index]
            row.tokens.append(token)
            self._advance(row)

    def _advance(self, row: Sequence) -> None:
        eos = self.tokenizer.eos_token_id
        text = self.local.decode(row.tokens)
        stop_at = _first_stop(text, row.params.stop)
        if stop_at is not None:
            self._emit(row, text[:stop_at])
            self._complete(row, text[:stop_at], "stop")
        elif row.tokens[-1] == eos:
            self._emit(row, text)
            self._complete(row, text, "stop")
        elif len(row.tokens) >= row.params.max_new_tokens:
            self._emit(row, text)
            self._complete(row, text, "length")
        elif row.stream:
            # Hold back what may become a stop string, and a half-decoded character.
            safe = len(text) - _stop_prefix(text, row.params.stop)
            if text.endswith("\ufffd"):
                safe = min(safe, len(text.rstrip("\ufffd")))
            self._emit(row, text[:safe])

    def _emit(self, row: Sequence, text: str) -> None:
        if row.stream and len(text) > row.sent:
            row.events.put(("text", text[row.sent :]))
            row.sent = len(text)

    def _complete(self, row: Sequence, text: str, reason: str) -> None:
        row.finished = (text, reason)

    def _retire(self) -> None:
        finished = [row for row in self.running if row.finished is not None]
        for row in finished:
            text, reason = row.finished
            self._finish(
                row,
                GenerationResult(
                    text=text,
                    input_tokens=len(row.prompt),
                    output_tokens=len(row.tokens),
                    finish_reason=reason,  # type: ignore[arg-type]
                ),
            )
        self._drop(finished, None)

    def _drop(self, rows: list[Sequence], reason: str | None) -> None:
        """Remove `rows` from the batch (their cache rows too) and cut padding columns."""
        import torch

        if not rows:
            return
        for row in rows:
            if reason is not None:
                self._finish(row, BackendError(reason))
        keep = [index for index, row in enumerate(self.running) if row not in rows]
        self.running = [self.running[index] for index in keep]
        if not self.running:
            self.cache = self.mask = None
            return
        indices = torch.tensor(keep, device=self.device)
        self.cache.batch_select_indices(indices)
        self.mask = self.mask[indices]
        padding = int((self.mask.cumsum(-1) == 0).sum(-1).min())
        if padding:
            self.mask = self.mask[:, padding:]
            for layer in self.cache.layers:
                layer.keys = layer.keys[:, :, padding:, :]
                layer.values = layer.values[:, :, padding:, :]

    def _reset(self, rows: list[Sequence], error: BackendError) -> None:
        for row in rows:
            self._finish(row, error)
        self.running, self.cache, self.mask = [], None, None

    def _finish(self, row: Sequence, outcome: GenerationResult | BackendError) -> None:
        if row.outcome is None:
            row.outcome = outcome
            row.events.put(("done", outcome))

    # -- adapters (peft mixed-adapter batches) -------------------------------------------

    def has_adapter(self, name: str) -> bool:
        return name in (getattr(self.model, "peft_config", None) or {})

    def load_adapter(self, name: str, directory: os.PathLike) -> None:
        """Load a LoRA adapter (unmerged) under `name`, between steps. The first one wraps
        the model in a PeftModel; rows without an adapter then run as "__base__"."""
        if self.has_adapter(name):
            return
        from peft import PeftModel

        with self.lock:
            if isinstance(self.model, PeftModel):
                self.model.load_adapter(str(directory), adapter_name=name)
            else:
                self.model = PeftModel.from_pretrained(
                    self.model, str(directory), adapter_name=name
                )
            self.model.eval()
            self.mixed_adapters = True
            self.prefixes = OrderedDict(
                (key, kv) for key, kv in self.prefixes.items() if key[0] != name
            )


def default_kv_budget(device: Any) -> int:
    """Bytes the batch's KV cache may use: STUDIO_LOCAL_KV_BUDGET_MB when set, else a
    quarter of the memory available now (CPU: MemAvailable; CUDA: free device memory)."""
    configured = os.environ.get("STUDIO_LOCAL_KV_BUDGET_MB")
    if configured:
        return int(float(configured) * 2**20)
    if device.type == "cuda":
        import torch

        free, _ = torch.cuda.mem_get_info(device)
        return free // 4
    try:
        with open("/proc/meminfo") as meminfo:
            for line in meminfo:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024 // 4
    except OSError:
        pass
    return 1 << 30


def _sample(logits, row: Sequence, torch) -> int:
    if row.generator is None:
        row.generator = torch.Generator(device=logits.device)
        seed = row.params.seed
        row.generator.manual_seed(
            seed if seed is not None else int(torch.randint(0, 2**62, (1,)).item())
        )
    probs = torch.softmax(logits / row.params.temperature, dim=-1)
    if row.params.top_p < 1.0:
        sorted_probs, order = probs.sort(descending=True)
        keep = sorted_probs.cumsum(-1) - sorted_probs < row.params.top_p
        keep[0] = True
        probs = torch.zeros_like(probs).scatter(0, order[keep], sorted_probs[keep])
    return int(torch.multinomial(probs, 1, generator=row.generator).item())


def _common_length(a: list[int], b: list[int], limit: int) -> int:
    """How many leading tokens `a` and `b` share, at most `limit`; 0 when that is fewer
    than PREFIX_MIN_TOKENS. A binary search over slice comparisons, which run in C: long
    prompts cost microseconds."""
    low, high = 0, min(len(a), len(b), limit)
    if high < PREFIX_MIN_TOKENS or a[:PREFIX_MIN_TOKENS] != b[:PREFIX_MIN_TOKENS]:
        return 0
    while low < high:
        middle = (low + high + 1) // 2
        if a[:middle] == b[:middle]:
            low = middle
        else:
            high = middle - 1
    return low


def _first_stop(text: str, stops: tuple[str, ...]) -> int | None:
    found = [index for index in (text.find(stop) for stop in stops if stop) if index >= 0]
    return min(found, default=None)


def _stop_prefix(text: str, stops: tuple[str, ...]) -> int:
    """Length of the longest end of `text` that begins some stop string."""
    longest = 0
    for stop in stops:
        for size in range(min(len(stop) - 1, len(text)), longest, -1):
            if stop.startswith(text[-size:]):
                longest = size
                break
    return longest


def is_out_of_memory(exc: RuntimeError) -> bool:
    import torch

    message = str(exc).lower()
    return (
        isinstance(exc, torch.OutOfMemoryError)
        or "out of memory" in message
        or "not enough memory" in message  # the CPU allocator's wording
    )
