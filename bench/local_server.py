"""The local inference server (workers/server: continuous batching over transformers)
against llama.cpp's OpenAI-compatible server, on the same prompts, model family and CPU.

    .venv/bin/python bench/local_server.py [--max-tokens 32] [--levels 1,8,32]
        [--requests-per-client 2] [--threads 1,2] [--precision fp32|q4|...]

Both servers are started here (tests/workers/local_server.py and
tests/workers/llama_server.py: SmolLM2-135M-Instruct; ours runs the float32 weights
converted from the GGUF file, llama.cpp the Q4_1 GGUF itself, with `--interrupt_requests
False` — by default llama-cpp-python's server cuts a running stream short when another
request arrives, which would make it look fast at 8 and 32 clients). Each side runs once
per thread count in --threads (OMP_NUM_THREADS for ours, --n_threads for llama.cpp) and keeps
the count with the best throughput at 8 clients, as its users would configure it on this
machine. Each is warmed up with one request, then, per concurrency level c, c client
threads send streaming chat completions (greedy, the same `max_tokens`,
`stream_options.include_usage`) one after another until c x requests-per-client are
answered. Measured per level:

    throughput   completion tokens of all requests / wall time
    TTFT         time from sending a request to its first content chunk (p50, p99)
    latency      time from sending a request to its last byte (p50, p99)

Completion tokens come from the usage chunk (counted chunks when a server sends none).
The last line is `ratio=<ours / llama.cpp throughput at 8 clients>`; the target is >= 1.5.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import threading
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "bench")]

from batch_generation import build_prompts  # noqa: E402

TARGET_RATIO = 1.5


@dataclass
class Sample:
    ttft: float
    latency: float
    tokens: int


@dataclass
class Level:
    clients: int
    wall: float
    samples: list[Sample]

    @property
    def throughput(self) -> float:
        return sum(s.tokens for s in self.samples) / self.wall


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))
    return ordered[index]


def ask(client: httpx.Client, base_url: str, model: str, messages, max_tokens: int) -> Sample:
    body = {
        "model": model,
        "messages": messages,
        "max_tokens": max_tokens,
        "temperature": 0,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    started = time.perf_counter()
    first = None
    chunks = 0
    usage = None
    with client.stream("POST", f"{base_url}/v1/chat/completions", json=body) as response:
        response.raise_for_status()
        for line in response.iter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            data = json.loads(line[6:])
            if data.get("usage"):
                usage = data["usage"]
            for choice in data.get("choices") or []:
                if choice.get("delta", {}).get("content"):
                    chunks += 1
                    if first is None:
                        first = time.perf_counter()
    ended = time.perf_counter()
    tokens = usage["completion_tokens"] if usage else chunks
    return Sample(ttft=(first or ended) - started, latency=ended - started, tokens=tokens)


def run_level(base_url: str, model: str, prompts, clients: int, per_client: int, max_tokens):
    jobs = iter(range(clients * per_client))
    lock = threading.Lock()
    samples: list[Sample] = []

    def client_loop() -> None:
        with httpx.Client(timeout=600) as client:
            while True:
                with lock:
                    index = next(jobs, None)
                if index is None:
                    return
                sample = ask(client, base_url, model, prompts[index % len(prompts)], max_tokens)
                with lock:
                    samples.append(sample)

    threads = [threading.Thread(target=client_loop) for _ in range(clients)]
    started = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return Level(clients, time.perf_counter() - started, samples)


def bench_server(name: str, base_url: str, model: str, prompts, args) -> dict[int, Level]:
    with httpx.Client(timeout=600) as client:
        ask(client, base_url, model, prompts[0], 4)  # warm-up
    results = {}
    for clients in args.levels:
        level = run_level(
            base_url, model, prompts, clients, args.requests_per_client, args.max_tokens
        )
        results[clients] = level
        ttft = [s.ttft for s in level.samples]
        latency = [s.latency for s in level.samples]
        print(
            f"[{loadavg()}] {name:9s} {clients:3d} clients  {len(level.samples):3d} requests  "
            f"{level.throughput:7.1f} tok/s  TTFT p50 {percentile(ttft, 50):6.2f} s "
            f"p99 {percentile(ttft, 99):6.2f} s  latency p50 {percentile(latency, 50):6.2f} s "
            f"p99 {percentile(latency, 99):6.2f} s",
            flush=True,
        )
    return results


def loadavg() -> str:
    return "load " + " ".join(f"{x:.2f}" for x in os.getloadavg())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--max-tokens", type=int, default=32)
    parser.add_argument("--levels", default="1,8,32")
    parser.add_argument("--requests-per-client", type=int, default=2)
    parser.add_argument(
        "--threads", default="1,2", help="thread counts tried on each side (default 1,2)"
    )
    parser.add_argument(
        "--precision", default=None, help="our server's --precision (default: its default)"
    )
    args = parser.parse_args(argv)
    args.levels = [int(x) for x in args.levels.split(",")]
    prompts = build_prompts(max(args.levels) * args.requests_per_client)

    from tests.workers.llama_server import llama_server
    from tests.workers.local_server import local_server

    print(
        f"{datetime.now(UTC):%Y-%m-%d %H:%M} UTC, {platform.processor() or platform.machine()}, "
        f"{os.cpu_count()} CPUs, {len(prompts)} prompts, max_tokens {args.max_tokens}, "
        f"{args.requests_per_client} requests per client, {loadavg()}",
        flush=True,
    )
    model = "smollm2-135m-instruct"
    reference = 8 if 8 in args.levels else args.levels[len(args.levels) // 2]
    thread_counts = [int(t) for t in args.threads.split(",") if t.strip()]
    # Each side as its users would run it on this machine: every thread count is tried
    # and each side keeps the one with the best throughput at the reference level.
    ours_runs, theirs_runs = {}, {}
    for threads in thread_counts:
        env = {"OMP_NUM_THREADS": str(threads)}
        options = ("--precision", args.precision) if args.precision else ()
        with local_server(*options, env=env) as (base_url, _):
            ours_runs[threads] = bench_server(f"local/{threads}t", base_url, model, prompts, args)
    # llama-cpp-python's server ends a running stream when another request arrives
    # (interrupt_requests, on by default): a server meant for concurrent clients turns it off.
    no_interrupt = ("--interrupt_requests", "False")
    for threads in thread_counts:
        with llama_server(threads=threads, extra_args=no_interrupt) as base_url:
            theirs_runs[threads] = bench_server(f"llama/{threads}t", base_url, model, prompts, args)
    ours_threads = max(ours_runs, key=lambda t: ours_runs[t][reference].throughput)
    theirs_threads = max(theirs_runs, key=lambda t: theirs_runs[t][reference].throughput)
    ours, theirs = ours_runs[ours_threads], theirs_runs[theirs_threads]
    print(f"best at {reference} clients: local {ours_threads} threads, llama.cpp {theirs_threads}")
    for clients in args.levels:
        print(
            f"{clients:3d} clients: local / llama.cpp throughput "
            f"{ours[clients].throughput / theirs[clients].throughput:.2f}"
        )
    ratio = ours[reference].throughput / theirs[reference].throughput
    print(f"target >= {TARGET_RATIO} at {reference} clients")
    print(f"ratio={ratio:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
