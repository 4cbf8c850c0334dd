"""Prompt fetch throughput: the runtime label fetch against a bare Django JSON view,
served by the same gunicorn process in the same run.

    .venv/bin/python bench/prompt_fetch.py [--workers 2] [--duration 10] [--connections 32]
        [--threads 2] [--rounds 3] [--database-url URL] [--cache-url URL]

Starts gunicorn on a free loopback port with a throwaway STUDIO_DATA_DIR. By default the
database is SQLite and the cache the default file cache, both inside that directory; with
--database-url / DATABASE_URL and --cache-url / CACHE_URL those are used instead (loopback
only: a missing PostgreSQL database is created, a Redis database is flushed first, user and
squad names are unique per run). Migrates, then creates a user, a squad, an API token and a
prompt whose `production` label points at version 1 (approved by an SME and a compliance
lead), all through the project's services.

    baseline  GET /healthz                                          (bare JsonResponse)
    fetch     GET /api/v1/squads/<squad>/prompts/<slug>?label=production
              Authorization: Bearer <token>

After warming the caches, wrk loads the two alternately (same duration, threads and
connections) and the medians are reported, with p50/p99 at 32 concurrent clients. One
more run sends If-None-Match (the 304 path) and is reported for information. Any status
other than the expected one fails the run. The last line is `ratio=<fetch_rps/baseline_rps>`;
the target is >= 0.7 with the cache warm.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import re
import secrets
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

# Server start-up, database creation and helpers are shared with the API overhead bench
# (run as `python bench/prompt_fetch.py`, this directory is on sys.path).
from api_overhead import (
    HOST,
    BenchError,
    _wrk_ms,
    add_server_argument,
    describe_database,
    ensure_postgres_database,
    free_port,
    gunicorn,
    run_checked,
)

BASELINE_PATH = "/healthz"
LABEL = "production"
TARGET_RATIO = 0.7
LATENCY_CONNECTIONS = 32
WARMUP_REQUESTS = 300
LOOPBACK = {"127.0.0.1", "localhost", "::1"}

# Runs inside `manage.py shell -c`: a request-free context, through the services.
SETUP_CODE = """
import json
from django.conf import settings
from django.contrib.auth import get_user_model
from django.db import connection
from apps.prompts.services import label_move, prompt_template_create
from apps.reviews.services.approvals import review_decide, review_request_open
from apps.squads.services import api_token_create, membership_add, squad_create

users = get_user_model().objects
user = users.create_user(username={username!r}, password=None)
squad = squad_create(actor=user, name={name!r}, slug={slug!r}, description="bench/prompt_fetch.py")
reviewers = []
for role in ("sme", "compliance"):
    reviewer = users.create_user(username={username!r} + "-" + role, password=None)
    membership_add(actor=user, squad=squad, user=reviewer, roles=[role])
    reviewers.append(reviewer)
token, secret = api_token_create(actor=user, name="bench")
template = prompt_template_create(
    actor=user,
    squad=squad,
    slug="greeting",
    first_version={{
        "messages": [
            {{"role": "system", "content": "You are {{{{ persona }}}}."}},
            {{"role": "user", "content": "{{{{ question }}}}"}},
        ],
        "input_schema": {{
            "type": "object",
            "properties": {{"persona": {{"type": "string"}}, "question": {{"type": "string"}}}},
            "required": ["persona", "question"],
        }},
        "commit_message": "v1",
    }},
)
template.refresh_from_db()
# `production` is protected: the version goes through the approval policy first.
review = review_request_open(actor=user, version=template.latest_version, note="bench")
for reviewer in reviewers:
    review_decide(actor=reviewer, review=review, verdict="approve")
label_move(actor=user, template=template, name={label!r}, version=template.latest_version)
print("BENCH-SETUP " + json.dumps({{
    "squad": squad.slug,
    "prompt": template.slug,
    "token": secret,
    "vendor": connection.vendor,
    "version": ".".join(str(p) for p in connection.Database.sqlite_version_info)
    if connection.vendor == "sqlite" else str(connection.pg_version),
    "cache": settings.CACHES["default"]["BACKEND"],
}}))
"""

# wrk counts only status >= 400 as errors; this script counts every unexpected status.
WRK_SCRIPT = """
local threads = {}
function setup(thread)
  table.insert(threads, thread)
end
function init(args)
  unexpected = 0
  first = 0
end
function response(status, headers, body)
  if status ~= EXPECTED then
    unexpected = unexpected + 1
    if first == 0 then first = status end
  end
end
function done(summary, latency, requests)
  local total, sample = 0, 0
  for _, thread in ipairs(threads) do
    total = total + thread:get("unexpected")
    if thread:get("first") ~= 0 then sample = thread:get("first") end
  end
  io.write(string.format("BENCH-UNEXPECTED %d %d\\n", total, sample))
end
"""


@dataclass
class Run:
    label: str
    rps: float
    requests: int
    p50_ms: float
    p99_ms: float


# --- environment and setup ------------------------------------------------------


def require_loopback(url: str, what: str) -> None:
    host = urlsplit(url).hostname
    if host not in LOOPBACK:
        raise BenchError(f"{what} must point at loopback, not {host!r}.")


def server_env(data_dir: Path, database_url: str | None, cache_url: str | None) -> dict[str, str]:
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
        # Set both explicitly: settings read ./.env, which may point at real services.
        DATABASE_URL=database_url or f"sqlite:///{data_dir / 'bench.sqlite3'}",
        CACHE_URL=cache_url or f"filecache://{data_dir / 'cache'}",
    )
    return env


def flush_redis(url: str) -> None:
    """Empty the Redis database named in the URL (a dedicated one: e.g. redis://…/5)."""
    parts = urlsplit(url)
    if parts.scheme not in {"redis", "rediss"}:
        return
    db = parts.path.lstrip("/")
    if not db.isdigit() or db == "0":
        raise BenchError("--cache-url must name a dedicated Redis database number, e.g. /5.")
    import redis

    client = redis.Redis.from_url(url, socket_timeout=5)
    try:
        client.flushdb()
    finally:
        client.close()


def prepare(env: dict[str, str]) -> dict[str, str]:
    python = sys.executable
    run_checked([python, "manage.py", "migrate", "--noinput"], env, timeout=120)
    suffix = secrets.token_hex(4)
    code = SETUP_CODE.format(
        username=f"bench-{suffix}", name=f"Bench {suffix}", slug=f"bench-{suffix}", label=LABEL
    )
    out = run_checked([python, "manage.py", "shell", "-c", code], env, timeout=60)
    for line in reversed(out.splitlines()):
        if line.startswith("BENCH-SETUP "):
            return dict(json.loads(line.removeprefix("BENCH-SETUP ")))
    raise BenchError(f"setup printed no result:\n{out}")


# --- requests -------------------------------------------------------------------


def get(port: int, path: str, headers: dict[str, str]) -> tuple[int, dict[str, str], bytes]:
    conn = http.client.HTTPConnection(HOST, port, timeout=10)
    try:
        conn.request("GET", path, headers=headers)
        response = conn.getresponse()
        return response.status, {k.lower(): v for k, v in response.getheaders()}, response.read()
    finally:
        conn.close()


def check_baseline(port: int) -> None:
    status, _, body = get(port, BASELINE_PATH, {})
    if status != 200 or json.loads(body) != {"status": "ok"}:
        raise BenchError(f"GET {BASELINE_PATH} answered {status}: {body[:300]!r}")


def check_fetch(port: int, path: str, auth: dict[str, str], setup: dict[str, str]) -> str:
    """200 with the prompt's JSON body; returns the ETag. Then the same ETag gives a 304."""
    status, headers, body = get(port, path, auth)
    if status != 200:
        raise BenchError(f"GET {path} answered {status}: {body[:300]!r}")
    if not headers.get("content-type", "").startswith("application/json"):
        raise BenchError(f"GET {path}: content-type {headers.get('content-type')!r}")
    data = json.loads(body)
    expected = {"squad": setup["squad"], "prompt": setup["prompt"], "label": LABEL, "version": 1}
    for key, value in expected.items():
        if data.get(key) != value:
            raise BenchError(f"GET {path}: {key}={data.get(key)!r}, expected {value!r}")
    if not isinstance(data.get("messages"), list) or len(data["messages"]) != 2:
        raise BenchError(f"GET {path}: unexpected messages {data.get('messages')!r}")
    etag = headers.get("etag")
    if not etag:
        raise BenchError(f"GET {path}: no ETag")
    status, _, body = get(port, path, {**auth, "If-None-Match": etag})
    if status != 304 or body:
        raise BenchError(f"GET {path} with If-None-Match answered {status}: {body[:300]!r}")
    return etag


def warm(port: int, path: str, headers: dict[str, str], expect: int, count: int) -> None:
    for _ in range(count):
        status, _, body = get(port, path, headers)
        if status != expect:
            raise BenchError(f"warm-up GET {path} answered {status}: {body[:300]!r}")


# --- wrk ------------------------------------------------------------------------


def run_wrk(
    label: str,
    url: str,
    headers: dict[str, str],
    *,
    expect: int,
    duration: int,
    connections: int,
    threads: int,
    script_dir: Path,
) -> Run:
    script = script_dir / f"expect-{expect}.lua"
    if not script.exists():
        script.write_text(f"EXPECTED = {expect}\n{WRK_SCRIPT}")
    args = ["wrk", "--latency", "-t", str(min(threads, connections)), "-c", str(connections)]
    args += ["-d", f"{duration}s", "--timeout", "10s", "-s", str(script)]
    for name, value in headers.items():
        args += ["-H", f"{name}: {value}"]
    args.append(url)
    proc = subprocess.run(args, capture_output=True, text=True, timeout=duration + 30, check=False)
    out = proc.stdout
    if proc.returncode != 0:
        raise BenchError(f"wrk failed:\n{out}\n{proc.stderr}")
    rps = re.search(r"Requests/sec:\s+([\d.]+)", out)
    total = re.search(r"(\d+) requests in", out)
    p50 = re.search(r"^\s+50%\s+(\S+)", out, re.MULTILINE)
    p99 = re.search(r"^\s+99%\s+(\S+)", out, re.MULTILINE)
    unexpected = re.search(r"BENCH-UNEXPECTED (\d+) (\d+)", out)
    if not (rps and total and p50 and p99 and unexpected):
        raise BenchError(f"cannot parse wrk output:\n{out}")
    if int(unexpected[1]):
        raise BenchError(
            f"{label}: {unexpected[1]} responses were not {expect} (e.g. {unexpected[2]}):\n{out}"
        )
    socket_errors = re.search(r"Socket errors: (.*)", out)
    if socket_errors:
        raise BenchError(f"{label}: socket errors: {socket_errors[1]}\n{out}")
    if int(total[1]) == 0:
        raise BenchError(f"{label}: no requests completed:\n{out}")
    return Run(label, float(rps[1]), int(total[1]), _wrk_ms(p50[1]), _wrk_ms(p99[1]))


# --- main -----------------------------------------------------------------------


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else "")
    parser.add_argument("--workers", type=int, default=2, help="gunicorn workers (default 2)")
    add_server_argument(parser, wsgi="gunicorn's sync workers")
    parser.add_argument(
        "--duration", type=int, default=10, help="seconds per measured run (default 10)"
    )
    parser.add_argument(
        "--connections", type=int, default=32, help="wrk connections for throughput (default 32)"
    )
    parser.add_argument("--threads", type=int, default=2, help="wrk threads (default 2)")
    parser.add_argument(
        "--rounds",
        type=int,
        default=3,
        help="alternating baseline/fetch rounds; medians are reported (default 3)",
    )
    parser.add_argument(
        "--warmup", type=int, default=2, help="seconds of wrk warm-up per endpoint (default 2)"
    )
    parser.add_argument(
        "--database-url",
        default=os.environ.get("DATABASE_URL"),
        help="database (default: $DATABASE_URL, else SQLite in a temp dir)",
    )
    parser.add_argument(
        "--cache-url",
        default=os.environ.get("CACHE_URL"),
        help="cache (default: $CACHE_URL, else the file cache in a temp dir)",
    )
    args = parser.parse_args()
    for name in ("workers", "duration", "connections", "threads", "rounds"):
        if getattr(args, name) < 1:
            parser.error(f"--{name} must be at least 1")
    if args.warmup < 0:
        parser.error("--warmup cannot be negative")
    return args


def median(runs: list[Run], attr: str) -> float:
    return statistics.median(getattr(r, attr) for r in runs)


def line(label: str, runs: list[Run]) -> str:
    return (
        f"{label:<10} {median(runs, 'rps'):>9.1f} rps  p50 {median(runs, 'p50_ms'):.2f} ms  "
        f"p99 {median(runs, 'p99_ms'):.2f} ms"
    )


def main() -> int:
    args = parse_args()
    if shutil.which("wrk") is None:
        raise BenchError("wrk not found: run `make bench-tools` (or apt-get install -y wrk)")
    if args.database_url:
        require_loopback(args.database_url, "--database-url")
    if args.cache_url:
        require_loopback(args.cache_url, "--cache-url")

    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="studio-bench-prompts-") as tmp:
        data_dir = Path(tmp)
        env = server_env(data_dir, args.database_url, args.cache_url)
        if args.database_url:
            ensure_postgres_database(args.database_url)
        if args.cache_url:
            flush_redis(args.cache_url)
        setup = prepare(env)
        port = free_port()
        base = f"http://{HOST}:{port}"
        fetch_path = f"/api/v1/squads/{setup['squad']}/prompts/{setup['prompt']}?label={LABEL}"
        auth = {"Authorization": f"Bearer {setup['token']}"}

        print(f"date:        {time.strftime('%Y-%m-%d %H:%M:%S %Z')}")
        print(f"server:      gunicorn studio.wsgi:application, {args.workers} sync workers")
        print(f"bind:        {HOST}:{port}")
        print(
            f"database:    {setup['vendor']} {setup['version']} "
            f"({describe_database(env['DATABASE_URL'])})"
        )
        print(f"cache:       {setup['cache']} ({describe_database(env['CACHE_URL'])})")
        print(
            f"load:        wrk, {args.threads} threads, {args.connections} connections, "
            f"{args.duration}s x {args.rounds} rounds per endpoint (alternating); "
            f"p50/p99 at {LATENCY_CONNECTIONS} connections"
        )
        print(f"host:        {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.2f} at start")
        print(f"baseline:    GET {BASELINE_PATH}")
        print(f"fetch:       GET {fetch_path}  (Authorization: Bearer ...)")
        sys.stdout.flush()

        def load(label: str, path: str, headers: dict[str, str], **kw: int) -> Run:
            kw.setdefault("expect", 200)
            kw.setdefault("duration", args.duration)
            kw.setdefault("connections", args.connections)
            return run_wrk(
                label, base + path, headers, threads=args.threads, script_dir=data_dir, **kw
            )

        baseline: list[Run] = []
        fetched: list[Run] = []
        latency: dict[str, list[Run]] = {"baseline": [], "fetch": []}
        with gunicorn(env, port, args.workers, data_dir / "gunicorn.log", args.server):
            check_baseline(port)
            etag = check_fetch(port, fetch_path, auth, setup)
            # Warm every worker's path and the shared cache: sequential requests, then wrk.
            warm(port, BASELINE_PATH, {}, 200, WARMUP_REQUESTS)
            warm(port, fetch_path, auth, 200, WARMUP_REQUESTS)
            if args.warmup:
                load("baseline", BASELINE_PATH, {}, duration=args.warmup)
                load("fetch", fetch_path, auth, duration=args.warmup)
            for round_no in range(1, args.rounds + 1):
                for label, path, headers, runs in (
                    ("baseline", BASELINE_PATH, {}, baseline),
                    ("fetch", fetch_path, auth, fetched),
                ):
                    run = load(label, path, headers)
                    runs.append(run)
                    if args.connections == LATENCY_CONNECTIONS:
                        latency[label].append(run)
                    print(
                        f"round {round_no} {label:<8} {run.rps:>9.1f} rps  "
                        f"p50 {run.p50_ms:.2f} ms  p99 {run.p99_ms:.2f} ms  "
                        f"({run.requests} requests)",
                        flush=True,
                    )
            if args.connections != LATENCY_CONNECTIONS:
                for label, path, headers in (
                    ("baseline", BASELINE_PATH, {}),
                    ("fetch", fetch_path, auth),
                ):
                    latency[label].append(
                        load(label, path, headers, connections=LATENCY_CONNECTIONS)
                    )
            conditional = load(
                "fetch-304",
                fetch_path,
                {**auth, "If-None-Match": etag},
                expect=304,
                connections=LATENCY_CONNECTIONS,
            )
            # Still the same server: the fetch kept answering the prompt.
            check_fetch(port, fetch_path, auth, setup)

    print(f"-- medians of {args.rounds} rounds at {args.connections} connections")
    print(line("baseline", baseline))
    print(line("fetch", fetched))
    print(f"-- latency at {LATENCY_CONNECTIONS} concurrent clients")
    print(line("baseline", latency["baseline"]))
    print(line("fetch", latency["fetch"]))
    base_rps = median(baseline, "rps")
    ratio = median(fetched, "rps") / base_rps
    print(
        f"fetch 304 (If-None-Match, informational): {conditional.rps:.1f} rps  "
        f"p50 {conditional.p50_ms:.2f} ms  p99 {conditional.p99_ms:.2f} ms  "
        f"({conditional.rps / base_rps:.3f} of baseline)"
    )
    verdict = "meets" if ratio >= TARGET_RATIO else "MISSES"
    print(
        f"fetch/baseline {ratio:.3f} {verdict} the target (>= {TARGET_RATIO}); "
        f"total {time.monotonic() - started:.0f}s"
    )
    print(f"ratio={ratio:.3f}")
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except (BenchError, subprocess.TimeoutExpired) as exc:
        print(f"bench failed: {exc}", file=sys.stderr)
        sys.exit(1)
