"""The hash chain: canonical form of an event, and a streaming verifier."""

import hashlib
import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from apps.audit.models import GENESIS_HASH

# The columns that the hash covers, in the order `verify` reads them.
CHAIN_FIELDS = (
    "sequence",
    "created_at",
    "actor_id",
    "actor_label",
    "squad_id",
    "action",
    "target_type",
    "target_id",
    "data",
    "ip",
    "prev_hash",
    "hash",
)


def canonical(
    *,
    sequence: int,
    created_at: datetime,
    actor_id: int | None,
    actor_label: str,
    squad_id: int | None,
    action: str,
    target_type: str,
    target_id: str,
    data: Any,
    ip: str | None,
) -> bytes:
    body = {
        "sequence": sequence,
        "time": created_at.astimezone(UTC).isoformat(timespec="microseconds"),
        "actor_id": actor_id,
        "actor": actor_label,
        "squad_id": squad_id,
        "action": action,
        "target_type": target_type,
        "target_id": target_id,
        "data": data,
        "ip": ip,
    }
    return json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def event_hash(prev_hash: str, canonical_event: bytes) -> str:
    return hashlib.sha256(prev_hash.encode() + canonical_event).hexdigest()


@dataclass(frozen=True)
class ChainReport:
    events_checked: int
    first_broken_sequence: int | None
    reason: str

    @property
    def intact(self) -> bool:
        return self.first_broken_sequence is None


def verify(rows: Iterable[tuple], *, start_sequence: int = 1) -> ChainReport:
    """Walk rows (tuples in CHAIN_FIELDS order, ascending sequence) and stop at the first break.

    Detects an edited row (its hash no longer matches), a deleted row (a gap in
    the sequence, reported at the missing number) and reordered rows (a row
    whose prev_hash is not its predecessor's hash).
    """
    expected_sequence = start_sequence
    prev_hash = GENESIS_HASH
    checked = 0
    for row in rows:
        record = dict(zip(CHAIN_FIELDS, row, strict=True))
        sequence = record["sequence"]
        if sequence != expected_sequence:
            if sequence > expected_sequence:
                reason = f"sequence {expected_sequence} is missing (next present is {sequence})"
            else:
                reason = f"sequence {sequence} appears out of order or twice"
            return ChainReport(checked, expected_sequence, reason)
        if record["prev_hash"] != prev_hash:
            return ChainReport(
                checked, sequence, f"sequence {sequence} does not follow its predecessor"
            )
        recomputed = event_hash(
            prev_hash,
            canonical(
                **{k: v for k, v in record.items() if k not in ("prev_hash", "hash")},
            ),
        )
        if recomputed != record["hash"]:
            return ChainReport(
                checked, sequence, f"sequence {sequence} was altered (hash mismatch)"
            )
        prev_hash = record["hash"]
        expected_sequence += 1
        checked += 1
    return ChainReport(checked, None, f"{checked} events, chain intact")


def iter_chain_rows(queryset: Any, chunk_size: int = 5000) -> Iterator[tuple]:
    """Stream rows for `verify` without loading the table."""
    return queryset.order_by("sequence").values_list(*CHAIN_FIELDS).iterator(chunk_size=chunk_size)
