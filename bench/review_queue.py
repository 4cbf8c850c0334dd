"""How "next item" and the queue dashboard scale with the size of an output review queue.

    .venv/bin/python bench/review_queue.py [--large 100000] [--small 100] [--rounds 25]

Builds two queues in one squad, through the services: a small one (100 items) and a
large one (100,000 items, added 10,000 per call), overlap 2, a four-score rubric. The
first 40 items of each are annotated by two reviewers beforehand, one in four in
disagreement, so the statistics are not trivial. Then, alternating the two queues,
four reviewers take turns: "next item" (timed: `review_next_item`, the claim) and an
annotation of the claimed item (timed separately), `--rounds` times each; the
dashboard (timed: `review_queue_get_for_user` + `review_queue_dashboard`, what its page
and API call run) is read `--dashboards` times per queue.

Throwaway SQLite database in a temp dir unless DATABASE_URL is set (a missing
PostgreSQL database is created; names are unique per run). Prints the median of each
operation per queue, the query plan of the claim on PostgreSQL (with the statistics
of the run, then after ANALYZE), and as its last line
`ratio=<value>`: the larger of the two large/small median ratios. Target: <= 2.
"""

import argparse
import os
import secrets
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TARGET_RATIO = 2.0
REVIEWERS = 4
PRE_ANNOTATED = 40
CHUNK = 10_000
RUBRIC = [
    {"name": "accuracy", "kind": "numeric", "min": 1, "max": 5, "required": True},
    {"name": "fluency", "kind": "numeric", "min": 0, "max": 10, "step": 0.5},
    {"name": "tone", "kind": "categorical", "options": ["formal", "casual", "rude"]},
    {"name": "cites_source", "kind": "boolean"},
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--large", type=int, default=100_000)
    parser.add_argument("--small", type=int, default=100)
    parser.add_argument("--rounds", type=int, default=25, help="claims per reviewer per queue")
    parser.add_argument("--dashboards", type=int, default=200, help="dashboard reads per queue")
    args = parser.parse_args()
    slots = args.small * 2 - PRE_ANNOTATED * 2
    if args.rounds * REVIEWERS > slots:
        sys.exit(f"--rounds too high: the small queue has {slots} places left to claim")
    tmp = tempfile.mkdtemp(prefix="studio-bench-review-")
    if "DATABASE_URL" in os.environ:
        sys.path.insert(0, str(ROOT / "bench"))
        from api_overhead import ensure_postgres_database

        ensure_postgres_database(os.environ["DATABASE_URL"])
    os.environ.setdefault("DATABASE_URL", f"sqlite:///{tmp}/review.sqlite3")
    os.environ["STUDIO_DATA_DIR"] = tmp
    os.environ["DJANGO_SETTINGS_MODULE"] = "studio.settings.base"
    sys.path.insert(0, str(ROOT))
    import django

    django.setup()
    from django.contrib.auth import get_user_model
    from django.core.management import call_command
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    from apps.reviews.selectors import queues as selectors
    from apps.reviews.services import queues as services
    from apps.squads.services import membership_add, squad_create

    call_command("migrate", verbosity=0)
    User = get_user_model()
    suffix = secrets.token_hex(4)
    owner = User.objects.create_user(username=f"bench-owner-{suffix}")
    squad = squad_create(actor=owner, name=f"Review bench {suffix}", slug=f"review-{suffix}")
    reviewers = []
    for i in range(REVIEWERS):
        user = User.objects.create_user(username=f"bench-rev{i}-{suffix}")
        membership_add(actor=owner, squad=squad, user=user, roles=["sme"])
        reviewers.append(user)
    version = connection.vendor
    if version == "sqlite":
        version += " " + ".".join(map(str, connection.Database.sqlite_version_info))
    else:
        version += f" {connection.pg_version}"
    print(f"database: {version}; items: {args.small:,} and {args.large:,}")

    def build(size: int, name: str):
        queue = services.review_queue_create(
            actor=owner, squad=squad, name=name, rubric=RUBRIC, overlap=2, annotator_roles=["sme"]
        )
        for start in range(0, size, CHUNK):
            rows = [
                {"inputs": {"n": n}, "output": f"Generated answer number {n}. " * 4}
                for n in range(start, min(size, start + CHUNK))
            ]
            services.review_items_add_external(actor=owner, queue=queue, items=rows)
        for n in range(PRE_ANNOTATED):
            for j, reviewer in enumerate(reviewers[:2]):
                item = services.review_next_item(actor=reviewer, queue=queue)
                annotate(reviewer, item, seed=n * 2 + (j if n % 4 == 0 else 0))
        return queue

    def annotate(reviewer, item, seed: int) -> None:
        services.review_annotate(
            actor=reviewer,
            item=item,
            verdict="approve" if seed % 5 else "reject",
            scores={
                "accuracy": 1 + seed % 5,
                "fluency": (seed % 21) / 2,
                "tone": ["formal", "casual", "rude"][seed % 3],
                "cites_source": seed % 2 == 0,
            },
            edited_output="Edited." if seed % 7 == 0 else None,
            seconds_spent=10 + seed % 50,
        )

    started = time.monotonic()
    queues = {"small": build(args.small, "Small"), "large": build(args.large, "Large")}
    print(f"built in {time.monotonic() - started:.1f}s")

    timings: dict[tuple[str, str], list[float]] = {
        (op, size): [] for op in ("next", "annotate", "dashboard") for size in queues
    }
    for round_no in range(args.rounds):
        for size, queue in queues.items():
            for k, reviewer in enumerate(reviewers):
                t0 = time.perf_counter()
                item = services.review_next_item(actor=reviewer, queue=queue)
                t1 = time.perf_counter()
                assert item is not None, f"{size} queue ran dry"
                annotate(reviewer, item, seed=round_no * REVIEWERS + k)
                t2 = time.perf_counter()
                timings["next", size].append(t1 - t0)
                timings["annotate", size].append(t2 - t1)
    viewer = reviewers[0]
    for _ in range(args.dashboards):
        for size, queue in queues.items():
            t0 = time.perf_counter()
            loaded = selectors.review_queue_get_for_user(user=viewer, squad=squad, slug=queue.slug)
            board = selectors.review_queue_dashboard(user=viewer, queue=loaded)
            timings["dashboard", size].append(time.perf_counter() - t0)
    assert board["items"] == args.large, board["items"]

    if connection.vendor == "postgresql":
        with CaptureQueriesContext(connection) as captured:
            services.review_next_item(actor=reviewers[0], queue=queues["large"])
        claim_sql = next(q["sql"] for q in captured.captured_queries if "SKIP LOCKED" in q["sql"])
        with connection.cursor() as cursor:
            # Timings ran on the statistics autovacuum left (if it ran at all since the
            # bulk insert); the plan it settles on once the table is analysed is the one
            # that matters for a queue worked through over days.
            for when in ("as timed", "after ANALYZE"):
                if when == "after ANALYZE":
                    cursor.execute("ANALYZE reviews_reviewitem, reviews_reviewassignment")
                cursor.execute("EXPLAIN " + claim_sql)
                print(f"claim plan on the large queue, {when}:")
                for (line,) in cursor.fetchall():
                    print(f"  {line}")

    ratios = {}
    for op in ("next", "annotate", "dashboard"):
        small = statistics.median(timings[op, "small"]) * 1000
        large = statistics.median(timings[op, "large"]) * 1000
        ratios[op] = large / small
        print(
            f"{op:<10} median {small:7.3f} ms at {args.small:,} items, {large:7.3f} ms at "
            f"{args.large:,} items: large/small {ratios[op]:.2f} "
            f"(n={len(timings[op, 'small'])} each)"
        )
    print(f"target: next item and dashboard large/small <= {TARGET_RATIO}")
    connection.close()
    shutil.rmtree(tmp, ignore_errors=True)
    print(f"ratio={max(ratios['next'], ratios['dashboard']):.2f}")


if __name__ == "__main__":
    main()
