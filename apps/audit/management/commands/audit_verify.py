"""Walk the audit hash chain and report the first broken sequence (exit 1 when broken)."""

import time

from django.core.management.base import BaseCommand, CommandError, CommandParser

from apps.audit.checkpoints import CheckpointRefused
from apps.audit.services import chain_verify, checkpoint_anchors, default_checkpoint_source


class Command(BaseCommand):
    help = (
        "Verify the audit log's hash chain, and that it agrees with signed checkpoints "
        "(--checkpoints, default the configured checkpoint file); exits non-zero at the "
        "first broken sequence or a checkpoint that does not verify."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "--checkpoints",
            metavar="PATH|URL",
            help="Signed checkpoints (the checkpoint file, or JSON log lines) to hold the "
            "chain to; default: STUDIO_AUDIT_CHECKPOINT_DIR/checkpoints.jsonl when present.",
        )

    def handle(self, *args: object, **options: object) -> None:
        started = time.monotonic()
        source = options["checkpoints"] or default_checkpoint_source()
        try:
            anchors = checkpoint_anchors(str(source)) if source else []
        except CheckpointRefused as exc:
            raise CommandError(f"audit checkpoints REFUSED: {exc}") from exc
        if source and not anchors:
            raise CommandError(f"audit checkpoints REFUSED: no checkpoint found in {source}")
        report = chain_verify(anchors=anchors)
        elapsed = time.monotonic() - started
        if not report.intact:
            raise CommandError(
                f"audit chain BROKEN at sequence {report.first_broken_sequence}: {report.reason} "
                f"({report.events_checked} events verified before it, {elapsed:.1f}s)"
            )
        self.stdout.write(f"audit chain intact: {report.events_checked} events in {elapsed:.1f}s")
        if source:
            newest = max(anchors, key=lambda a: a.sequence)
            self.stdout.write(
                f"{len(anchors)} signed checkpoints from {source} agree "
                f"(newest covers sequence {newest.sequence}: {newest.source})"
            )
        else:
            self.stdout.write(
                "no signed checkpoints given: a history rewritten with recomputed hashes, or "
                "a removed tail, cannot be told from an intact chain (--checkpoints)"
            )
