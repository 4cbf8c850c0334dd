"""200 concurrent gateway streams: the server `make run` ships (gunicorn with uvicorn
workers over studio.asgi) against the threaded WSGI server it replaced (gunicorn gthread,
the same workers × 16 threads), in front of the same slow streaming mock upstream.

    .venv/bin/python bench/gateway_streams.py [--streams 200] [--workers 2]
                                              [--chunks 20] [--chunk-delay 0.1]

The mock upstream (stdlib, a thread per connection) answers every `stream: true` call
with --chunks pieces, --chunk-delay seconds apart: a model that takes about
chunks × delay seconds per answer. Studio runs with governance (the squad's default
policy: output rules applied as the text streams), a squad and a key quota (counted in
the configured cache: CACHE_URL), and a Generation record per call (DATABASE_URL).

--streams clients open their streams at once (httpx, asyncio). For each server the
bench prints: how many streams were open upstream at once, the wall time until the last
one ended, p50/p99 time to the first content chunk, the answer time of /healthz asked
while the streams are open, and the server's worker threads at the peak. A threaded
server holds a thread per stream, so streams past its threads wait for a free one; an
ASGI worker holds none while a stream waits for its upstream.

Prints `ratio=<gthread wall time / ASGI wall time>` last (above 1: ASGI serves the same
streams sooner).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from http.server import ThreadingHTTPServer
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench"))

import api_overhead as common  # noqa: E402  (bench/ is not a package)
import gateway  # noqa: E402

HOST = "127.0.0.1"


class _Server(ThreadingHTTPServer):
    # The listen backlog is set when the server is made (socketserver's default of 5
    # refuses a burst of connections).
    request_queue_size = 1024
    daemon_threads = True


class Upstream:
    """The streaming mock, counting the streams open at once."""

    def __init__(self, chunks: int, delay: float) -> None:
        self.chunks, self.delay = chunks, delay
        self.open = self.peak = 0
        self.lock = threading.Lock()
        outer = self

        class Handler(gateway.Mock):
            # A stream ends when the connection closes (no length, no chunked encoding).
            protocol_version = "HTTP/1.0"

            def do_POST(self) -> None:
                self.rfile.read(int(self.headers.get("Content-Length", 0)))
                with outer.lock:
                    outer.open += 1
                    outer.peak = max(outer.peak, outer.open)
                try:
                    self.send_response(200)
                    self.send_header("Content-Type", "text/event-stream")
                    self.end_headers()
                    base = {"id": "c", "object": "chat.completion.chunk", "created": 0}
                    for i in range(outer.chunks):
                        delta = {"content": f"word{i} "}
                        choice = {"index": 0, "delta": delta, "finish_reason": None}
                        self._event({**base, "model": "mock", "choices": [choice]})
                        time.sleep(outer.delay)
                    done = {"index": 0, "delta": {}, "finish_reason": "stop"}
                    self._event({**base, "model": "mock", "choices": [done]})
                    usage = {"prompt_tokens": 12, "completion_tokens": outer.chunks}
                    usage["total_tokens"] = 12 + outer.chunks
                    self._event({**base, "model": "mock", "choices": [], "usage": usage})
                    self.wfile.write(b"data: [DONE]\n\n")
                    self.wfile.flush()
                except (BrokenPipeError, ConnectionResetError):
                    pass
                finally:
                    with outer.lock:
                        outer.open -= 1

            def _event(self, data: dict) -> None:
                self.wfile.write(f"data: {json.dumps(data)}\n\n".encode())
                self.wfile.flush()

        self.server = _Server((HOST, 0), Handler)

    @contextlib.contextmanager
    def running(self) -> Iterator[str]:
        thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        thread.start()
        try:
            yield f"http://{HOST}:{self.server.server_address[1]}"
        finally:
            self.server.shutdown()


def worker_threads(master: int) -> int:
    children = Path(f"/proc/{master}/task/{master}/children")
    total = 0
    for pid in children.read_text().split() if children.exists() else []:
        with contextlib.suppress(OSError):
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("Threads:"):
                    total += int(line.split()[1])
    return total


async def load(base: str, key: str, streams: int, upstream: Upstream, master: int) -> dict:
    import httpx

    limits = httpx.Limits(max_connections=streams + 10, max_keepalive_connections=0)
    first: list[float] = []
    failures: list[str] = []
    peak = {"threads": 0, "health_ms": None}
    async with httpx.AsyncClient(timeout=600, limits=limits) as client:

        async def one() -> None:
            started = time.monotonic()
            body = {
                "model": "mock",
                "messages": [{"role": "user", "content": "Say hello."}],
                "stream": True,
            }
            try:
                async with client.stream(
                    "POST",
                    f"{base}/v1/chat/completions",
                    headers={"Authorization": f"Bearer {key}"},
                    json=body,
                ) as response:
                    if response.status_code != 200:
                        failures.append(f"HTTP {response.status_code}")
                        return
                    seen = False
                    text = b""
                    async for part in response.aiter_bytes():
                        if not seen and b'"content": "word' in part:
                            first.append(time.monotonic() - started)
                            seen = True
                        text += part
                    if not text.endswith(b"data: [DONE]\n\n"):
                        tail = text[-300:].decode(errors="replace").strip()
                        failures.append(f"stream did not end with [DONE]: {tail}")
            except httpx.HTTPError as exc:
                failures.append(f"{type(exc).__name__}: {exc}")

        async def watch() -> None:
            asked = False
            while True:
                peak["threads"] = max(peak["threads"], worker_threads(master))
                if not asked and upstream.open >= min(streams, upstream.peak or 1) > 1:
                    # Asked once, while streams are open: does the server still answer?
                    t = time.monotonic()
                    try:
                        response = await client.get(f"{base}/healthz", timeout=600)
                        if response.status_code == 200:
                            peak["health_ms"] = (time.monotonic() - t) * 1000
                    except httpx.HTTPError:
                        pass
                    asked = True
                await asyncio.sleep(0.05)

        started = time.monotonic()
        watcher = asyncio.create_task(watch())
        await asyncio.gather(*(one() for _ in range(streams)))
        wall = time.monotonic() - started
        watcher.cancel()
    first.sort()
    return {
        "wall": wall,
        "open_at_once": upstream.peak,
        "p50_first": first[len(first) // 2] if first else None,
        "p99_first": first[min(len(first) - 1, int(len(first) * 0.99))] if first else None,
        "health_ms": peak["health_ms"],
        "threads": peak["threads"],
        "failures": failures,
    }


def serve(
    args: argparse.Namespace, env: dict, data_dir: Path, key: str, slug: str, kind: str
) -> dict:
    upstream = Upstream(args.chunks, args.chunk_delay)
    port = common.free_port()
    command = [
        common.venv_bin("gunicorn"),
        "studio.asgi:application" if kind == "asgi" else "studio.wsgi:application",
        "-c",
        "studio/gunicorn.conf.py",
        "--bind",
        f"{HOST}:{port}",
        "--workers",
        str(args.workers),
    ]
    command += ["-k", "uvicorn_worker.UvicornWorker"] if kind == "asgi" else ["--threads", "16"]
    with upstream.running() as upstream_url:
        code = (
            "from apps.generation.models import ModelTarget\n"
            f"ModelTarget.objects.filter(name='mock', squad__slug={slug!r})"
            f".update(base_url={upstream_url!r})\n"
        )
        common.run_checked([sys.executable, "manage.py", "shell", "-c", code], env, 120)
        log = data_dir / f"gunicorn-{kind}.log"
        with gateway.process(command, env, log, f"http://{HOST}:{port}/healthz"):
            master = _master_pid(port)
            result = asyncio.run(load(f"http://{HOST}:{port}", key, args.streams, upstream, master))
    first = (
        f"p50 {result['p50_first']:.2f} s, p99 {result['p99_first']:.2f} s"
        if result["p50_first"] is not None
        else "none"
    )
    health = f"{result['health_ms']:.0f} ms" if result["health_ms"] is not None else "no answer"
    print(
        f"{kind:7s} {args.streams} streams: {result['open_at_once']} open upstream at once, "
        f"all ended in {result['wall']:.1f} s; first content {first}; /healthz meanwhile "
        f"{health}; {result['threads']} worker threads at the peak; "
        f"{len(result['failures'])} failed",
        flush=True,
    )
    for failure in sorted(set(result["failures"]))[:5]:
        print(f"  failure: {failure}")
    return result


def _master_pid(port: int) -> int:
    """gunicorn's master: the process listening on the port that has worker children."""
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        with contextlib.suppress(OSError):
            cmdline = (proc / "cmdline").read_bytes().split(b"\0")
            if any(b"gunicorn" in part for part in cmdline[:2]) and f"{HOST}:{port}".encode() in (
                b" ".join(cmdline)
            ):
                children = proc / "task" / proc.name / "children"
                if children.exists() and children.read_text().strip():
                    return int(proc.name)
    raise common.BenchError(f"no gunicorn master with workers on port {port}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--streams", type=int, default=200)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--chunks", type=int, default=20)
    parser.add_argument("--chunk-delay", type=float, default=0.1)
    args = parser.parse_args()
    data_dir = Path(tempfile.mkdtemp(prefix="bench-gateway-streams-"))
    env = common.server_env(data_dir)
    if env.get("DATABASE_URL", "").startswith("postgres"):
        common.ensure_postgres_database(env["DATABASE_URL"])
    print(
        f"database: {common.describe_database(env['DATABASE_URL'])}; cache: "
        f"{env.get('CACHE_URL') or 'file cache'}; each upstream answer: {args.chunks} chunks "
        f"{args.chunk_delay} s apart (about {args.chunks * args.chunk_delay:.1f} s)",
        flush=True,
    )
    # The target is pointed at each run's upstream before that run starts.
    key, slug = gateway.bench_squad(env, "http://127.0.0.1:9")
    asgi = serve(args, env, data_dir, key, slug, "asgi")
    gthread = serve(args, env, data_dir, key, slug, "gthread")
    print(f"ratio={gthread['wall'] / asgi['wall']:.3f}")


if __name__ == "__main__":
    main()
