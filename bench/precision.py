"""Reduced precision on the CPU: the local runtime with fp32, fp16, bf16, dynamic int8 and q4
weights, same prompts, same decode loop, in the same run; llama.cpp on the same prompts for
reference.

    .venv/bin/python bench/precision.py [--prompts 16] [--max-new-tokens 32]
        [--precisions fp32,fp16,bf16,int8,q4,llama.cpp]

Each precision runs in its own child process (so its peak resident memory is its own):
`workers.runtime.local.load_directory(directory, precision=...)` — fp32 as converted;
fp16 and bf16 (loaded in that dtype, only when the CPU has the arithmetic: AVX512-FP16,
AVX512-BF16 or AMX); int8 (`torch.ao.quantization.quantize_dynamic` over every nn.Linear,
the output head included); q4 (workers.runtime.quantized: 4-bit decoder weights with bf16
activations for decode steps, fp32 prefill, a greedy head equal to fp32's). Then, after a
short warm-up, greedy (temperature 0) generation of the benchmark prompts of
`bench/batch_generation.py` through the continuous-batching loop: all prompts together
(up to 64 rows), and the first four one at a time (batch 1). `llama.cpp` runs the Q4_1
GGUF with llama-cpp-python (2 threads), one prompt after another (both speed columns are
that sequential speed).

Agreement: the share of prompts whose output is identical to fp32's, and the mean share
of each output's tokens that match fp32's before the first difference. Quality: the demo
squad's eval cases (seed_demo: prompt "summarise" v1, its three cases and assertions),
generated greedily with 96 new tokens and judged by apps.evals.assertions. The default
precision is the fastest one with every output identical to fp32's; the last line is
`ratio=<that precision's batched tok/s / fp32's>` (1.0 when only fp32 agrees).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))


def demo_cases() -> list[tuple[str, list[dict], list[dict]]]:
    """The demo squad's eval cases (apps/squads seed_demo) on its prompt "summarise" v1:
    (name, rendered messages, assertions)."""
    import re

    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "studio.settings.base")
    import django

    django.setup()
    from apps.squads.management.commands.seed_demo import DEMO_CASES, DEMO_MESSAGES

    cases = []
    for case in DEMO_CASES:
        variables = case["variables"]
        messages = [
            {
                "role": m["role"],
                "content": re.sub(
                    r"\{\{\s*(\w+)\s*\}\}", lambda g, v=variables: str(v[g[1]]), m["content"]
                ),
            }
            for m in DEMO_MESSAGES
        ]
        cases.append((case["name"], messages, case["assertions"]))
    return cases


def demo_passes(outputs: list[tuple[str, int]]) -> list[bool]:
    """Whether each demo case's output (text, tokens) passes all its assertions."""
    from apps.evals.assertions import Observed, check

    passes = []
    for (_, _, assertions), (text, tokens) in zip(demo_cases(), outputs, strict=True):
        seen = Observed(text, 0, tokens, None, {})
        passes.append(all(check(i, a, seen)["passed"] for i, a in enumerate(assertions)))
    return passes


def llama_child(args: argparse.Namespace) -> dict:
    """llama.cpp (the portable build, Q4_1 GGUF, greedy) on the same prompts: how far the
    4-bit runtime squads would otherwise pick lands from fp32."""
    from batch_generation import build_prompts
    from llama_cpp import Llama
    from transformers import AutoTokenizer

    from workers.runtime.local import gguf_path, model_dir

    llm = Llama(model_path=str(gguf_path()), n_ctx=2048, n_threads=2, verbose=False)
    encode = AutoTokenizer.from_pretrained(model_dir())

    def answer(messages, max_tokens):
        out = llm.create_chat_completion(messages=messages, max_tokens=max_tokens, temperature=0)
        return out["choices"][0]["message"]["content"] or "", out["usage"]["completion_tokens"]

    start = time.perf_counter()
    answers = [answer(p, args.max_new_tokens) for p in build_prompts(args.prompts)]
    wall = time.perf_counter() - start
    demo = [answer(messages, 96) for _, messages, _ in demo_cases()]
    return {
        "precision": "Q4_1",
        "batched_tokens": sum(n for _, n in answers),
        "batched_s": wall,
        "single_tokens": sum(n for _, n in answers[:4]),
        "single_s": wall * 4 / len(answers),
        "texts": [t for t, _ in answers],
        "token_ids": [encode(t, add_special_tokens=False)["input_ids"] for t, _ in answers],
        "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "demo_passes": demo_passes(demo),
    }


def child(args: argparse.Namespace) -> dict:
    import torch  # noqa: F401
    from batch_generation import build_prompts

    from workers.runtime import GenerationParams
    from workers.runtime.local import LocalModel, load_directory, model_dir, precision_of

    loaded = load_directory(model_dir(), precision=args.child)
    local = LocalModel(loaded.model, loaded.tokenizer)
    prompts = build_prompts(args.prompts)
    greedy = GenerationParams(max_new_tokens=args.max_new_tokens, temperature=0)
    local.generate(prompts[:2], GenerationParams(max_new_tokens=4, temperature=0))
    start = time.perf_counter()
    batched = local.generate(prompts, greedy)
    batched_s = time.perf_counter() - start
    start = time.perf_counter()
    single = local.generate(prompts[:4], greedy, batch_size=1)
    single_s = time.perf_counter() - start
    encode = local.tokenizer
    demo = local.generate(
        [messages for _, messages, _ in demo_cases()],
        GenerationParams(max_new_tokens=96, temperature=0),
    )
    return {
        "demo_passes": demo_passes([(r.text, r.output_tokens) for r in demo]),
        "precision": precision_of(local.model),
        "batched_tokens": sum(r.output_tokens for r in batched),
        "batched_s": batched_s,
        "single_tokens": sum(r.output_tokens for r in single),
        "single_s": single_s,
        "texts": [r.text for r in batched],
        "token_ids": [encode(r.text, add_special_tokens=False)["input_ids"] for r in batched],
        "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }


def prefix_share(ours: list[int], reference: list[int]) -> float:
    same = 0
    for a, b in zip(ours, reference, strict=False):
        if a != b:
            break
        same += 1
    return same / max(len(ours), len(reference), 1)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--prompts", type=int, default=16)
    parser.add_argument("--max-new-tokens", type=int, default=32)
    parser.add_argument("--precisions", default="fp32,fp16,bf16,int8")
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        run = llama_child if args.child == "llama.cpp" else child
        print("BENCH-RESULT " + json.dumps(run(args)))
        return 0

    from workers.runtime.local import bf16_supported, fp16_supported, load_local_model

    load_local_model()  # converts the GGUF once, before any timing
    print(f"date: {datetime.now(UTC).isoformat(timespec='seconds')}")
    print(f"load average at start: {os.getloadavg()}  (cores: {os.cpu_count()})")
    print(f"bf16 / fp16 arithmetic on this CPU: {bf16_supported()} / {fp16_supported()}")
    print(f"{args.prompts} prompts, {args.max_new_tokens} new tokens, greedy")
    results: dict[str, dict] = {}
    for precision in args.precisions.split(","):
        out = subprocess.run(
            [
                sys.executable,
                __file__,
                "--child",
                precision,
                "--prompts",
                str(args.prompts),
                "--max-new-tokens",
                str(args.max_new_tokens),
            ],
            capture_output=True,
            text=True,
            check=False,
        )
        line = next((x for x in out.stdout.splitlines() if x.startswith("BENCH-RESULT ")), None)
        if line is None:
            print(out.stdout[-2000:], out.stderr[-4000:], file=sys.stderr)
            print(f"bench failed: the {precision} child died")
            return 1
        results[precision] = json.loads(line.removeprefix("BENCH-RESULT "))
    reference = results["fp32"]
    print(
        f"{'precision':<10} {'ran as':<7} {'batched tok/s':>14} {'batch-1 tok/s':>14} "
        f"{'peak RSS MiB':>13} {'identical':>10} {'prefix':>7} {'demo cases':>10}"
    )
    agreeing = []
    for name, r in results.items():
        same = sum(a == b for a, b in zip(r["texts"], reference["texts"], strict=True))
        prefix = sum(
            prefix_share(a, b) for a, b in zip(r["token_ids"], reference["token_ids"], strict=True)
        ) / len(r["token_ids"])
        r["tps"] = r["batched_tokens"] / r["batched_s"]
        single = r["single_tokens"] / r["single_s"]
        print(
            f"{name:<10} {r['precision']:<7} {r['tps']:>14.1f} {single:>14.1f} "
            f"{r['peak_rss_mib']:>13.0f} {same:>4}/{len(r['texts']):<5} {prefix:>7.1%} "
            f"{sum(r['demo_passes']):>6}/{len(r['demo_passes'])}"
        )
        if same == len(r["texts"]) and name != "llama.cpp":
            agreeing.append(name)
    best = max(agreeing, key=lambda name: results[name]["tps"])
    print(f"fastest with identical outputs: {best}")
    print(f"ratio={results[best]['tps'] / reference['tps']:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
