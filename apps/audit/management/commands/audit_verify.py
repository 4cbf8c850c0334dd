"""Walk the audit hash chain and report the first broken sequence (exit 1 when broken)."""

import time

from django.core.management.base import BaseCommand, CommandError

from apps.audit.services import chain_verify


class Command(BaseCommand):
    help = "Verify the audit log's hash chain; exits non-zero at the first broken sequence."

    def handle(self, *args: object, **options: object) -> None:
        started = time.monotonic()
        report = chain_verify()
        elapsed = time.monotonic() - started
        if not report.intact:
            raise CommandError(
                f"audit chain BROKEN at sequence {report.first_broken_sequence}: {report.reason} "
                f"({report.events_checked} events verified before it, {elapsed:.1f}s)"
            )
        self.stdout.write(f"audit chain intact: {report.events_checked} events in {elapsed:.1f}s")
