"""API overhead: the authenticated, permission-checked squad detail endpoint against a
bare Django JSON view, served by the same gunicorn process in the same run.

    .venv/bin/python bench/api_overhead.py [--workers 2] [--duration 10] ...

Starts gunicorn on a free loopback port with a throwaway STUDIO_DATA_DIR (and an
SQLite database inside it, unless DATABASE_URL is set: then that database is used,
created first if it is a missing PostgreSQL database, with unique user and squad
names so repeated runs do not collide). Migrates, creates a user, a squad and a
personal API token through the project's services, then loads

    baseline  GET /healthz                                  (bare JsonResponse)
    api       GET /api/v1/squads/<slug>  Authorization: Bearer <token>

with wrk (or a small Python client when wrk is missing), alternating the two,
and reports the median of each. The last line is `ratio=<api_rps/baseline_rps>`;
the target is >= 0.8.
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import json
import os
import re
import secrets
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

ROOT = Path(__file__).resolve().parent.parent
HOST = "127.0.0.1"
BASELINE_PATH = "/healthz"
TARGET_RATIO = 0.8

# Runs inside `manage.py shell -c`: a request-free context, through the services.
SETUP_CODE = """
import json
from django.conf import settings
from django.contrib.auth import get_user_model
from django.db import connection
from apps.squads.services import api_token_create, squad_create

user = get_user_model().objects.create_user(username={username!r}, password=None)
squad = squad_create(actor=user, name={name!r}, slug={slug!r}, description="bench/api_overhead.py")
token, secret = api_token_create(actor=user, name="bench")
print("BENCH-SETUP " + json.dumps({{
    "slug": squad.slug,
    "token": secret,
    "vendor": connection.vendor,
    "cache": settings.CACHES["default"]["BACKEND"].rsplit(".", 1)[-1],
    "version": ".".join(str(p) for p in connection.Database.sqlite_version_info)
    if connection.vendor == "sqlite" else str(connection.pg_version),
}}))
"""


class BenchError(RuntimeError):
    pass


@dataclass
class Result:
    label: str
    rps: float
    requests: int
    p50_ms: float | None = None
    p99_ms: float | None = None
    errors: dict[str, int] = field(default_factory=dict)


# --- environment and setup ------------------------------------------------------


def venv_bin(name: str) -> str:
    """A console script next to the running interpreter (the project's .venv), else PATH."""
    candidate = Path(sys.executable).with_name(name)
    if candidate.exists():
        return str(candidate)
    found = shutil.which(name)
    if found is None:
        raise BenchError(f"{name} not found; run `make install`.")
    return found


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


def server_env(data_dir: Path) -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        DJANGO_SETTINGS_MODULE="studio.settings.base",
        STUDIO_DATA_DIR=str(data_dir),
        ALLOWED_HOSTS="127.0.0.1,localhost",
        DEBUG="false",
        LOG_LEVEL="WARNING",
        PYTHONUNBUFFERED="1",
        # The API budgets still count every request (their cost is measured) but never refuse.
        STUDIO_API_RATE_PER_TOKEN="1000000000/60",
        STUDIO_API_RATE_PER_ADDRESS="1000000000/60",
    )
    if not os.environ.get("DATABASE_URL"):
        # Set it explicitly: settings read ./.env, which may point at a real database.
        env["DATABASE_URL"] = f"sqlite:///{data_dir / 'bench.sqlite3'}"
    return env


def describe_database(url: str) -> str:
    """The URL with any password masked."""
    password = urlsplit(url).password
    return url.replace(f":{password}@", ":***@") if password else url


def ensure_postgres_database(url: str) -> None:
    """Create the database named in a postgres:// URL when it does not exist yet."""
    parts = urlsplit(url)
    if parts.scheme not in {"postgres", "postgresql", "pgsql", "postgis"}:
        return
    if parts.hostname not in {"127.0.0.1", "localhost", "::1"}:
        raise BenchError(f"DATABASE_URL must point at loopback, not {parts.hostname!r}.")
    name = parts.path.lstrip("/")
    if not name:
        raise BenchError("DATABASE_URL names no database.")
    import psycopg
    from psycopg import sql

    conninfo = {
        "host": parts.hostname,
        "port": parts.port or 5432,
        "user": parts.username or "postgres",
        "password": parts.password,
        "dbname": "postgres",
    }
    with psycopg.connect(**conninfo, autocommit=True, connect_timeout=5) as conn:
        exists = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,)).fetchone()
        if not exists:
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
            print(f"created database {name}")


def run_checked(args: list[str], env: dict[str, str], timeout: float) -> str:
    proc = subprocess.run(
        args, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout, check=False
    )
    if proc.returncode != 0:
        raise BenchError(f"{' '.join(args[:3])} failed:\n{proc.stdout}\n{proc.stderr}")
    return proc.stdout


def prepare_database(env: dict[str, str]) -> dict[str, str]:
    python = sys.executable
    run_checked([python, "manage.py", "migrate", "--noinput"], env, timeout=120)
    suffix = secrets.token_hex(4)
    code = SETUP_CODE.format(
        username=f"bench-{suffix}", name=f"Bench {suffix}", slug=f"bench-{suffix}"
    )
    out = run_checked([python, "manage.py", "shell", "-c", code], env, timeout=60)
    for line in reversed(out.splitlines()):
        if line.startswith("BENCH-SETUP "):
            return dict(json.loads(line.removeprefix("BENCH-SETUP ")))
    raise BenchError(f"setup printed no result:\n{out}")


# --- server ---------------------------------------------------------------------


def fetch(port: int, path: str, headers: dict[str, str]) -> tuple[int, bytes]:
    conn = http.client.HTTPConnection(HOST, port, timeout=5)
    try:
        conn.request("GET", path, headers=headers)
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()


def server_command(server: str) -> list[str]:
    """gunicorn's application and worker class: `asgi` is what `make run` and production
    serve (uvicorn workers over studio.asgi), `wsgi` the sync workers served before."""
    if server == "asgi":
        return [
            venv_bin("gunicorn"),
            "studio.asgi:application",
            "-k",
            "uvicorn_worker.UvicornWorker",
        ]
    return [venv_bin("gunicorn"), "studio.wsgi:application"]


@contextlib.contextmanager
def gunicorn(
    env: dict[str, str], port: int, workers: int, log: Path, server: str = "asgi"
) -> Iterator[None]:
    args = [
        *server_command(server),
        "--bind",
        f"{HOST}:{port}",
        "--workers",
        str(workers),
        "--log-level",
        "warning",
    ]
    with log.open("w") as log_file:
        proc = subprocess.Popen(args, cwd=ROOT, env=env, stdout=log_file, stderr=subprocess.STDOUT)
        try:
            deadline = time.monotonic() + 30
            while True:
                if proc.poll() is not None:
                    raise BenchError(f"gunicorn exited early:\n{log.read_text()}")
                with contextlib.suppress(OSError):
                    if fetch(port, BASELINE_PATH, {})[0] == 200:
                        break
                if time.monotonic() > deadline:
                    raise BenchError(f"gunicorn did not answer in 30 s:\n{log.read_text()}")
                time.sleep(0.2)
            yield
        finally:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=5)


def check_endpoint(port: int, path: str, headers: dict[str, str], expect: dict) -> None:
    """One request before loading: 200 and the expected JSON (no redirect, no error page)."""
    status, body = fetch(port, path, headers)
    if status != 200:
        raise BenchError(f"GET {path} answered {status}: {body[:300]!r}")
    data = json.loads(body)
    for key, value in expect.items():
        if data.get(key) != value:
            raise BenchError(f"GET {path}: {key}={data.get(key)!r}, expected {value!r}")


# --- load generators ------------------------------------------------------------

UNITS_MS = {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60000.0}


def _wrk_ms(text: str) -> float:
    match = re.fullmatch(r"([\d.]+)(us|ms|s|m)", text)
    if match is None:
        raise BenchError(f"cannot parse wrk latency {text!r}")
    return float(match[1]) * UNITS_MS[match[2]]


def run_wrk(
    label: str, url: str, headers: dict[str, str], duration: int, connections: int, threads: int
) -> Result:
    args = ["wrk", "--latency", "-t", str(threads), "-c", str(connections), "-d", f"{duration}s"]
    for name, value in headers.items():
        args += ["-H", f"{name}: {value}"]
    args.append(url)
    proc = subprocess.run(args, capture_output=True, text=True, timeout=duration + 30, check=False)
    out = proc.stdout
    if proc.returncode != 0:
        raise BenchError(f"wrk failed:\n{out}\n{proc.stderr}")
    rps = re.search(r"Requests/sec:\s+([\d.]+)", out)
    total = re.search(r"(\d+) requests in", out)
    if rps is None or total is None:
        raise BenchError(f"cannot parse wrk output:\n{out}")
    errors: dict[str, int] = {}
    # wrk counts status >= 400 as "Non-2xx or 3xx"; check_endpoint rules out redirects.
    non_2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    if non_2xx:
        errors["non-2xx"] = int(non_2xx[1])
    socket_errors = re.search(
        r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out
    )
    if socket_errors:
        for name, count in zip(
            ("connect", "read", "write", "timeout"), socket_errors.groups(), strict=True
        ):
            if int(count):
                errors[name] = int(count)
    p50 = re.search(r"^\s+50%\s+(\S+)", out, re.MULTILINE)
    p99 = re.search(r"^\s+99%\s+(\S+)", out, re.MULTILINE)
    return Result(
        label=label,
        rps=float(rps[1]),
        requests=int(total[1]),
        p50_ms=_wrk_ms(p50[1]) if p50 else None,
        p99_ms=_wrk_ms(p99[1]) if p99 else None,
        errors=errors,
    )


def run_python_client(
    label: str, url: str, headers: dict[str, str], duration: int, connections: int, threads: int
) -> Result:
    """Fallback when wrk is missing: one thread per connection, keep-alive when the server
    allows it (gunicorn's sync workers close after each response). `threads` is unused."""
    parts = urlsplit(url)
    assert parts.hostname is not None and parts.port is not None
    path = parts.path or "/"
    lock = threading.Lock()
    latencies: list[float] = []
    errors: dict[str, int] = {}
    deadline = time.monotonic() + duration

    def worker() -> None:
        local: list[float] = []
        local_errors: dict[str, int] = {}
        conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=10)
        while time.monotonic() < deadline:
            start = time.perf_counter()
            try:
                conn.request("GET", path, headers=headers)
                response = conn.getresponse()
                response.read()
            except (OSError, http.client.HTTPException):
                local_errors["socket"] = local_errors.get("socket", 0) + 1
                conn.close()
                continue
            local.append(time.perf_counter() - start)
            if response.status != 200:
                local_errors["non-200"] = local_errors.get("non-200", 0) + 1
        conn.close()
        with lock:
            latencies.extend(local)
            for key, count in local_errors.items():
                errors[key] = errors.get(key, 0) + count

    started = time.monotonic()
    pool = [threading.Thread(target=worker) for _ in range(connections)]
    for thread in pool:
        thread.start()
    for thread in pool:
        thread.join()
    elapsed = time.monotonic() - started
    latencies.sort()

    def pct(q: float) -> float | None:
        if not latencies:
            return None
        return latencies[min(len(latencies) - 1, int(q * len(latencies)))] * 1000

    return Result(
        label=label,
        rps=len(latencies) / elapsed,
        requests=len(latencies),
        p50_ms=pct(0.50),
        p99_ms=pct(0.99),
        errors=errors,
    )


# --- main -----------------------------------------------------------------------


def fmt_ms(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.2f} ms"


def median_or_none(values: list[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return statistics.median(present) if present else None


def add_server_argument(parser: argparse.ArgumentParser, *, wsgi: str) -> None:
    """--server: what a server benchmark runs Studio under."""
    parser.add_argument(
        "--server",
        choices=("asgi", "wsgi"),
        default="asgi",
        help="asgi: uvicorn workers over studio.asgi, as `make run` serves (default); "
        f"wsgi: {wsgi}",
    )


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else "")
    parser.add_argument("--workers", type=int, default=2, help="gunicorn workers (default 2)")
    add_server_argument(parser, wsgi="gunicorn's sync workers")
    parser.add_argument(
        "--duration", type=int, default=10, help="seconds per measured run (default 10)"
    )
    parser.add_argument("--connections", type=int, default=16, help="open connections (default 16)")
    parser.add_argument("--threads", type=int, default=2, help="wrk threads (default 2)")
    parser.add_argument(
        "--rounds",
        type=int,
        default=3,
        help="alternating baseline/api rounds; the median is reported (default 3)",
    )
    parser.add_argument(
        "--client",
        choices=("auto", "wrk", "python"),
        default="auto",
        help="load generator: wrk when installed (auto), or the Python fallback",
    )
    parser.add_argument(
        "--warmup", type=int, default=3, help="seconds of warm-up per endpoint (default 3)"
    )
    args = parser.parse_args()
    for name in ("workers", "duration", "connections", "threads", "rounds"):
        if getattr(args, name) < 1:
            parser.error(f"--{name} must be at least 1")
    if args.threads > args.connections:
        parser.error("--threads cannot exceed --connections")
    return args


def main() -> int:
    args = parse_args()
    wrk = shutil.which("wrk") if args.client != "python" else None
    if args.client == "wrk" and wrk is None:
        raise BenchError("wrk not found: apt-get install -y wrk, or use --client python.")
    load = run_wrk if wrk else run_python_client
    if wrk:
        client = wrk
    else:
        reason = "requested" if args.client == "python" else "wrk not found"
        client = f"Python client (threads + http.client; {reason}): figures are lower than wrk's"

    with tempfile.TemporaryDirectory(prefix="studio-bench-") as tmp:
        data_dir = Path(tmp)
        env = server_env(data_dir)
        if os.environ.get("DATABASE_URL"):
            ensure_postgres_database(os.environ["DATABASE_URL"])
        setup = prepare_database(env)
        port = free_port()
        base_url = f"http://{HOST}:{port}"
        api_path = f"/api/v1/squads/{setup['slug']}"
        auth = {"Authorization": f"Bearer {setup['token']}"}
        targets = [
            ("baseline", f"{base_url}{BASELINE_PATH}", {}),
            ("api", f"{base_url}{api_path}", auth),
        ]

        print("server:     gunicorn studio.wsgi:application (sync workers)")
        print(f"bind:       {HOST}:{port}")
        print(f"workers:    {args.workers}")
        database = describe_database(env["DATABASE_URL"])
        print(f"database:   {setup['vendor']} {setup['version']} ({database})")
        print(f"cache:      {setup['cache']}")
        print(f"client:     {client}")
        threads = f"{args.threads} threads, " if wrk else ""
        print(
            f"load:       {args.connections} connections, {threads}"
            f"{args.duration}s x {args.rounds} rounds per endpoint (alternating), "
            f"{args.warmup}s warm-up"
        )
        # Other processes on the machine skew both figures; say how busy it was.
        print(f"host:       {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.2f} at start")
        print(f"baseline:   GET {BASELINE_PATH}")
        print(f"api:        GET {api_path}  (Authorization: Bearer ...)")
        sys.stdout.flush()

        results: dict[str, list[Result]] = {"baseline": [], "api": []}
        with gunicorn(env, port, args.workers, data_dir / "gunicorn.log", args.server):
            check_endpoint(port, BASELINE_PATH, {}, {"status": "ok"})
            check_endpoint(port, api_path, auth, {"slug": setup["slug"]})
            if args.warmup:
                for label, url, headers in targets:
                    load(label, url, headers, args.warmup, args.connections, args.threads)
            for round_no in range(1, args.rounds + 1):
                for label, url, headers in targets:
                    result = load(
                        label, url, headers, args.duration, args.connections, args.threads
                    )
                    if result.errors or result.requests == 0:
                        raise BenchError(
                            f"{label} round {round_no}: errors {result.errors or 'no requests'}"
                        )
                    results[label].append(result)
                    print(
                        f"round {round_no} {label:<8} {result.rps:>9.1f} rps  "
                        f"p50 {fmt_ms(result.p50_ms)}  p99 {fmt_ms(result.p99_ms)}  "
                        f"({result.requests} requests)",
                        flush=True,
                    )
            # Still the same server: one more check that the API kept answering 200.
            check_endpoint(port, api_path, auth, {"slug": setup["slug"]})

    summary: dict[str, float] = {}
    for label in ("baseline", "api"):
        runs = results[label]
        rps = statistics.median(r.rps for r in runs)
        summary[label] = rps
        print(
            f"{label:<9} median {rps:>9.1f} rps  "
            f"p50 {fmt_ms(median_or_none([r.p50_ms for r in runs]))}  "
            f"p99 {fmt_ms(median_or_none([r.p99_ms for r in runs]))}"
        )
    ratio = summary["api"] / summary["baseline"]
    verdict = "meets" if ratio >= TARGET_RATIO else "MISSES"
    print(f"api/baseline {ratio:.3f} {verdict} the target (>= {TARGET_RATIO})")
    print(f"ratio={ratio:.3f}")
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except (BenchError, subprocess.TimeoutExpired) as exc:
        print(f"bench failed: {exc}", file=sys.stderr)
        sys.exit(1)
