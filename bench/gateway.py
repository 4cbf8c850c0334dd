"""Studio's gateway against LiteLLM's proxy, in front of the same instant mock upstream.

    .venv/bin/python bench/gateway.py [--duration 10] [--connections 32] [--workers 2]

One OpenAI-compatible mock upstream (stdlib, HTTP/1.1 keep-alive, answers at once) serves
both sides. LiteLLM's proxy runs from a virtual environment of its own
(`$STUDIO_DATA_DIR/bench/litellm-venv`, made with `pip install 'litellm[proxy]'` on the
first run; or --litellm PATH), with the mock as its only model and no database. Studio
runs under gunicorn (--workers; --server asgi, the default, as `make run` serves it, or
wsgi: gthread with 8 threads each) with governance (the squad's default
policy), quotas (a squad and a key quota, counted in the configured cache: set CACHE_URL
to Redis) and a Generation record per call (the configured DATABASE_URL, migrated).
LiteLLM runs its default single uvicorn worker (--litellm-workers).

wrk loads each side: throughput at --connections concurrent non-streaming requests, and
the latency of one client, whose p50/p99 minus the mock's own (called directly) is the
latency each gateway adds. Prints `ratio=<Studio rps / LiteLLM rps>` last (target >= 1.0).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import secrets
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench"))

import api_overhead as common  # noqa: E402  (bench/ is not a package)

HOST = "127.0.0.1"
BODY = {"model": "mock", "messages": [{"role": "user", "content": "Say hello."}], "max_tokens": 16}
ANSWER = json.dumps(
    {
        "id": "chatcmpl-mock",
        "object": "chat.completion",
        "created": 0,
        "model": "mock",
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": "Hello!"},
                "finish_reason": "stop",
            }
        ],
        "usage": {"prompt_tokens": 12, "completion_tokens": 3, "total_tokens": 15},
    }
).encode()

SETUP_CODE = """
import json
from django.contrib.auth import get_user_model
from apps.gateway import services as gateway
from apps.generation.services import model_target_create
from apps.squads.services import squad_create

user = get_user_model().objects.create_user(username={username!r}, password=None)
squad = squad_create(actor=user, name={name!r}, slug={slug!r}, description="bench/gateway.py")
model_target_create(actor=user, squad=squad, name="mock", kind="remote", base_url={upstream!r},
                    price_input_per_1k="0.001", price_output_per_1k="0.002")
key, secret = gateway.service_key_create(actor=user, squad=squad, name="bench", targets=["*"])
gateway.quota_set(actor=user, squad=squad, requests_per_minute=10**9, tokens_per_minute=10**12,
                  budget_tokens=10**15)
gateway.quota_set(actor=user, squad=squad, key=key, requests_per_minute=10**9)
print("BENCH-SETUP " + json.dumps({{"key": secret}}))
"""


class Mock(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def setup(self) -> None:
        super().setup()
        # Headers and body go out in two writes: without this, Nagle's algorithm and the
        # client's delayed ACK add ~40 ms to every answer.
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def log_message(self, *args: object) -> None:
        pass

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length", 0)))
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(ANSWER)))
        self.end_headers()
        self.wfile.write(ANSWER)

    def do_GET(self) -> None:
        body = b'{"object": "list", "data": [{"id": "mock", "object": "model"}]}'
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


def bench_squad(env: dict[str, str], upstream: str) -> tuple[str, str]:
    """Migrate, then a squad of its own with the target `mock` at `upstream`, quotas and
    a service key (SETUP_CODE): (the key's secret, the squad's slug)."""
    common.run_checked([sys.executable, "manage.py", "migrate", "--noinput"], env, 300)
    suffix = secrets.token_hex(4)
    slug = f"bench-{suffix}"
    code = SETUP_CODE.format(
        username=f"bench-{suffix}", name=f"Bench {suffix}", slug=slug, upstream=upstream
    )
    out = common.run_checked([sys.executable, "manage.py", "shell", "-c", code], env, 120)
    return json.loads(out.split("BENCH-SETUP ", 1)[1].splitlines()[0])["key"], slug


class _MockServer(ThreadingHTTPServer):
    # The listen backlog is set when the server is made (socketserver's default of 5
    # resets a burst of connections); a class attribute, not one set afterwards.
    request_queue_size = 512
    daemon_threads = True


@contextlib.contextmanager
def mock_upstream() -> Iterator[str]:
    server = _MockServer((HOST, 0), Mock)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://{HOST}:{server.server_address[1]}"
    finally:
        server.shutdown()


def litellm_bin(explicit: str | None, data_dir: Path) -> Path:
    if explicit:
        return Path(explicit)
    venv = Path(os.environ.get("STUDIO_DATA_DIR", ROOT / "var")) / "bench" / "litellm-venv"
    binary = venv / "bin" / "litellm"
    if not binary.exists():
        print(f"installing litellm[proxy] into {venv} …", flush=True)
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
        subprocess.run(
            [str(venv / "bin" / "python"), "-m", "pip", "install", "-q", "litellm[proxy]"],
            check=True,
        )
    return binary


@contextlib.contextmanager
def process(
    args: list[str],
    env: dict[str, str],
    log: Path,
    ready_url: str,
    headers: dict[str, str] | None = None,
    cwd: Path = ROOT,
) -> Iterator[None]:
    import httpx

    with log.open("w") as out:
        proc = subprocess.Popen(
            args, cwd=cwd, env=env, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT
        )
        try:
            deadline = time.monotonic() + 300  # LiteLLM imports for a while on a busy machine
            while True:
                if proc.poll() is not None:
                    raise common.BenchError(f"{args[0]} exited early:\n{log.read_text()[-3000:]}")
                with contextlib.suppress(httpx.HTTPError):
                    if httpx.get(ready_url, headers=headers or {}, timeout=2).status_code == 200:
                        break
                if time.monotonic() > deadline:
                    raise common.BenchError(f"{args[0]} not ready:\n{log.read_text()[-3000:]}")
                time.sleep(0.3)
            yield
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()


def wrk(url: str, key: str, *, connections: int, duration: int, latency: bool) -> dict:
    script = Path(tempfile.mkstemp(suffix=".lua")[1])
    script.write_text(
        'wrk.method = "POST"\n'
        f"wrk.body = {json.dumps(json.dumps(BODY))}\n"
        'wrk.headers["Content-Type"] = "application/json"\n'
        f'wrk.headers["Authorization"] = "Bearer {key}"\n'
        "done = function(summary, latency, requests)\n"
        '  io.write(string.format("RESULT %d %d %d %f %f\\n", summary.requests,'
        " summary.errors.status + summary.errors.connect + summary.errors.read +"
        " summary.errors.write + summary.errors.timeout, summary.duration,"
        " latency:percentile(50), latency:percentile(99)))\nend\n"
    )
    threads = min(2, connections)
    out = subprocess.run(
        [
            "wrk",
            f"-t{threads}",
            f"-c{connections}",
            f"-d{duration}s",
            "--timeout",
            "30s",
            "-s",
            str(script),
            url,
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    script.unlink()
    match = re.search(r"RESULT (\d+) (\d+) (\d+) ([\d.]+) ([\d.]+)", out)
    if match is None:
        raise common.BenchError(f"wrk printed no result:\n{out}")
    requests, errors, micros, p50, p99 = match.groups()
    return {
        "rps": int(requests) / (int(micros) / 1e6),
        "requests": int(requests),
        "errors": int(errors),
        "p50_ms": float(p50) / 1000,
        "p99_ms": float(p99) / 1000,
    }


def measure(label: str, url: str, key: str, args: argparse.Namespace) -> dict:
    wrk(url, key, connections=4, duration=2, latency=False)  # warm up
    load = wrk(url, key, connections=args.connections, duration=args.duration, latency=False)
    single = wrk(url, key, connections=1, duration=args.duration, latency=True)
    print(
        f"{label:8s} {load['rps']:8.1f} req/s at {args.connections} connections "
        f"({load['requests']} requests, {load['errors']} errors); one client: "
        f"p50 {single['p50_ms']:.2f} ms, p99 {single['p99_ms']:.2f} ms",
        flush=True,
    )
    return {"load": load, "single": single}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=int, default=10)
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--workers", type=int, default=2)
    common.add_server_argument(parser, wsgi="gthread workers with 8 threads each")
    parser.add_argument("--litellm", help="path of the litellm executable")
    # With --num_workers 2 the proxy's worker processes died at start on this machine (the
    # server never answered); one uvicorn worker is LiteLLM's default.
    parser.add_argument("--litellm-workers", type=int, default=1)
    args = parser.parse_args()
    data_dir = Path(tempfile.mkdtemp(prefix="bench-gateway-"))
    env = common.server_env(data_dir)
    if env.get("DATABASE_URL", "").startswith("postgres"):
        common.ensure_postgres_database(env["DATABASE_URL"])
    print(
        f"database: {common.describe_database(env['DATABASE_URL'])}; "
        f"cache: {os.environ.get('CACHE_URL') or 'file cache'}",
        flush=True,
    )
    with mock_upstream() as upstream:
        mock = measure("mock", f"{upstream}/v1/chat/completions", "none", args)
        # LiteLLM
        binary = litellm_bin(args.litellm, data_dir)
        config = data_dir / "litellm.yaml"
        config.write_text(
            "model_list:\n  - model_name: mock\n    litellm_params:\n"
            f"      model: openai/mock\n      api_base: {upstream}/v1\n      api_key: none\n"
        )
        port = common.free_port()
        lenv = {k: v for k, v in os.environ.items() if not k.startswith(("DATABASE_URL",))}
        # No network here: the bundled model cost map, not a download at start.
        lenv.update(
            LITELLM_LOG="ERROR",
            LITELLM_MASTER_KEY="sk-bench",
            PYTHONUNBUFFERED="1",
            LITELLM_LOCAL_MODEL_COST_MAP="True",
        )
        largs = [
            str(binary),
            "--config",
            str(config),
            "--host",
            HOST,
            "--port",
            str(port),
            "--num_workers",
            str(args.litellm_workers),
        ]
        with process(
            largs,
            lenv,
            data_dir / "litellm.log",
            f"http://{HOST}:{port}/v1/models",
            {"Authorization": "Bearer sk-bench"},
        ):
            litellm = measure(
                "litellm", f"http://{HOST}:{port}/v1/chat/completions", "sk-bench", args
            )
        # Studio
        key, _ = bench_squad(env, upstream)
        port = common.free_port()
        studio_args = [
            *common.server_command(args.server),
            "-c",
            "studio/gunicorn.conf.py",
            "--bind",
            f"{HOST}:{port}",
            "--workers",
            str(args.workers),
            *(["--threads", "8"] if args.server == "wsgi" else []),
        ]
        with process(studio_args, env, data_dir / "gunicorn.log", f"http://{HOST}:{port}/healthz"):
            studio = measure("studio", f"http://{HOST}:{port}/v1/chat/completions", key, args)
    for label, result in (("studio", studio), ("litellm", litellm)):
        added50 = result["single"]["p50_ms"] - mock["single"]["p50_ms"]
        added99 = result["single"]["p99_ms"] - mock["single"]["p99_ms"]
        print(f"{label} adds p50 {added50:.2f} ms, p99 {added99:.2f} ms over the mock")
    if studio["load"]["errors"] or litellm["load"]["errors"]:
        print("warning: errors under load (see the counts above)")
    print(f"ratio={studio['load']['rps'] / litellm['load']['rps']:.3f}")


if __name__ == "__main__":
    main()
