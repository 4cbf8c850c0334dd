"""How long `manage.py audit_verify` takes on a large audit log, and its memory.

Builds N chained events (default 1,000,000) in a throwaway SQLite database (or
DATABASE_URL) with the real hash functions, then times the streaming verifier
against a baseline that only streams the same rows without hashing. Prints both,
the verifier's peak RSS growth, and as its last line `ratio=<verify/stream time>`.
"""

import argparse
import os
import resource
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--events", type=int, default=1_000_000)
    args = parser.parse_args()
    tmp = tempfile.mkdtemp(prefix="studio-bench-audit-")
    os.environ.setdefault("DATABASE_URL", f"sqlite:///{tmp}/audit.sqlite3")
    os.environ["STUDIO_DATA_DIR"] = tmp
    os.environ["DJANGO_SETTINGS_MODULE"] = "studio.settings.base"
    sys.path.insert(0, str(ROOT))
    import django

    django.setup()
    from django.core.management import call_command
    from django.db import connection, transaction

    from apps.audit import chain
    from apps.audit.models import GENESIS_HASH, AuditEvent

    call_command("migrate", verbosity=0)
    if AuditEvent.objects.exists():
        sys.exit("the bench database already has audit events; point DATABASE_URL elsewhere")
    print(f"database: {connection.vendor}; events: {args.events:,}")
    started = time.monotonic()
    prev, batch, t0 = GENESIS_HASH, [], datetime(2026, 1, 1, tzinfo=UTC)
    with transaction.atomic():
        for n in range(1, args.events + 1):
            fields = {
                "sequence": n,
                "created_at": t0 + timedelta(seconds=n),
                "actor_id": n % 50,
                "actor_label": f"user{n % 50}",
                "squad_id": n % 7,
                "action": "squad.member_added",
                "target_type": "squads.membership",
                "target_id": str(n),
                "data": {"username": f"user{n}", "roles": ["sme"]},
                "ip": "127.0.0.1",
            }
            digest = chain.event_hash(prev, chain.canonical(**fields))
            batch.append(AuditEvent(**fields, prev_hash=prev, hash=digest))
            prev = digest
            if len(batch) == 10_000:
                AuditEvent.objects.bulk_create(batch)
                batch = []
        AuditEvent.objects.bulk_create(batch)
    print(f"built in {time.monotonic() - started:.1f}s")

    started = time.monotonic()
    rows = sum(1 for _ in chain.iter_chain_rows(AuditEvent.objects.all()))
    stream_s = time.monotonic() - started
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    started = time.monotonic()
    report = chain.verify(chain.iter_chain_rows(AuditEvent.objects.all()))
    verify_s = time.monotonic() - started
    rss_after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    assert report.intact and report.events_checked == rows == args.events, report
    print(f"stream only:  {stream_s:.1f}s ({rows / stream_s:,.0f} rows/s)")
    print(f"audit_verify: {verify_s:.1f}s ({rows / verify_s:,.0f} events/s)")
    print(f"peak RSS growth during verify: {(rss_after - rss_before) / 1024:.0f} MiB")
    print(f"ratio={verify_s / stream_s:.2f}")


if __name__ == "__main__":
    main()
