"""The hash chain: canonical form of an event, and a streaming verifier.

The hash covers exactly what the database gives back. `storable` and `storable_ip` map
an event's data and address onto a form that PostgreSQL (jsonb, inet) and SQLite (JSON
text) both return unchanged, so a legal value can never look like tampering later:
jsonb keeps numbers as decimals (no -0.0; 1e+16 comes back as the integer
10000000000000000), cannot hold NUL or lone surrogates, and inet prints IPv4-compatible
IPv6 addresses with a dotted quad.
"""

import hashlib
import ipaddress
import json
import math
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
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


# Python writes floats from 1e16 up in exponent form; jsonb gives them back as integers.
_EXPONENT_FORM = 1e16
_NON_FINITE = {math.inf: "Infinity", -math.inf: "-Infinity"}
_REPLACEMENT = "\ufffd"


def _storable_text(text: str) -> str:
    # Surrogate pairs become the character they encode (as json.loads makes them), lone
    # surrogates and NUL (which jsonb refuses) the replacement character.
    if text.isascii():
        return text.replace("\x00", _REPLACEMENT)
    joined = text.encode("utf-16-le", "surrogatepass").decode("utf-16-le", "replace")
    return joined.replace("\x00", _REPLACEMENT)


def storable(value: Any) -> Any:
    """`value` (parsed JSON: dict, list, str, int, float, bool, None) in the form both
    databases' JSON columns give back unchanged. -0.0 becomes 0.0, floats of 1e16 and more
    become the integers jsonb makes of them, NaN and infinities the strings "NaN",
    "Infinity", "-Infinity"; NUL and lone surrogates in strings and keys become U+FFFD."""
    if value is None or isinstance(value, bool | int):
        return value
    if isinstance(value, float):
        if math.isnan(value):
            return "NaN"
        if math.isinf(value):
            return _NON_FINITE[value]
        if value == 0:
            return 0.0
        if abs(value) >= _EXPONENT_FORM:
            return int(Decimal(repr(value)))
        return value
    if isinstance(value, str):
        return _storable_text(value)
    if isinstance(value, dict):
        return {_storable_text(str(k)): storable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [storable(v) for v in value]
    raise TypeError(f"{type(value).__name__} is not a JSON value")


def address(raw: str | None) -> str | None:
    """One spelling per IP address, whichever the database gave back. Needed because none
    is a fixed point of both: Django stores ::1.2.3.4 as ::102:304, which PostgreSQL's
    inet prints as ::1.2.3.4 again. Not an address: returned unchanged."""
    if not raw or ":" not in raw:
        return raw or None  # IPv4 comes back as it was stored
    try:
        parsed = ipaddress.IPv6Address(raw)
    except ValueError:
        return raw
    if parsed.ipv4_mapped is not None:
        return f"::ffff:{parsed.ipv4_mapped}"
    packed = parsed.packed
    if packed[:12] == bytes(12) and packed[12:14] != b"\0\0":
        # IPv4-compatible (::a.b.c.d): inet's spelling.
        return f"::{ipaddress.IPv4Address(packed[12:])}"
    return str(parsed)


def storable_ip(raw: str | None) -> str | None:
    """The caller's address for the ip column, or None when it is not an address (a
    scope id such as %eth0 is dropped: inet cannot hold it)."""
    if not raw:
        return None
    try:
        parsed = ipaddress.ip_address(raw.split("%", 1)[0])
    except ValueError:
        return None
    return address(str(parsed))


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
        "ip": address(ip),
    }
    return json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def event_hash(prev_hash: str, canonical_event: bytes) -> str:
    return hashlib.sha256(prev_hash.encode() + canonical_event).hexdigest()


def recompute(record: dict[str, Any]) -> str:
    """The hash a stored row (a dict of CHAIN_FIELDS) should carry, from its own columns."""
    fields = {k: v for k, v in record.items() if k not in ("prev_hash", "hash")}
    return event_hash(record["prev_hash"], canonical(**fields))


@dataclass(frozen=True)
class ChainReport:
    events_checked: int
    first_broken_sequence: int | None
    reason: str
    anchors_checked: int = 0
    reanchored: tuple[int, ...] = ()

    @property
    def intact(self) -> bool:
        return self.first_broken_sequence is None


@dataclass(frozen=True)
class Anchor:
    """A hash the row with this sequence must carry, from outside the database (a signed
    checkpoint); `source` says which, for the report."""

    sequence: int
    hash: str
    source: str


@dataclass(frozen=True)
class Reanchored:
    """A row a bug broke, acknowledged by a signed `audit.chain_reanchored` event: accepted
    while it still carries `stored_hash` and its content still hashes to `content_hash`."""

    sequence: int
    stored_hash: str
    content_hash: str
    source: str


def verify(
    rows: Iterable[tuple],
    *,
    start_sequence: int = 1,
    anchors: Iterable[Anchor] = (),
    reanchored: Iterable[Reanchored] = (),
) -> ChainReport:
    """Walk rows (tuples in CHAIN_FIELDS order, ascending sequence) and stop at the first break.

    Detects an edited row (its hash no longer matches), a deleted row (a gap in
    the sequence, reported at the missing number) and reordered rows (a row
    whose prev_hash is not its predecessor's hash). With anchors it also detects a
    history rewritten with recomputed hashes up to an anchored row (the row's hash
    differs from the anchor's) and a removed tail (an anchor beyond the last row).
    A row whose content no longer hashes to its stored hash is accepted only when it is
    re-anchored exactly as it is now, and listed in the report.
    """
    acknowledged = {r.sequence: r for r in reanchored}
    accepted: list[int] = []
    by_sequence: dict[int, Anchor] = {}
    for anchor in anchors:
        if anchor.sequence == 0:
            continue  # the empty chain: nothing to compare
        seen = by_sequence.setdefault(anchor.sequence, anchor)
        if seen.hash != anchor.hash:
            return ChainReport(
                0,
                anchor.sequence,
                f"two signed checkpoints disagree on sequence {anchor.sequence} "
                f"({seen.source}; {anchor.source}): the history was forked",
            )
    expected_sequence = start_sequence
    prev_hash = GENESIS_HASH
    checked = anchored = 0
    for row in rows:
        record = dict(zip(CHAIN_FIELDS, row, strict=True))
        sequence = record["sequence"]
        if sequence != expected_sequence:
            if sequence > expected_sequence:
                reason = f"sequence {expected_sequence} is missing (next present is {sequence})"
            else:
                reason = f"sequence {sequence} appears out of order or twice"
            return ChainReport(checked, expected_sequence, reason, anchored)
        if record["prev_hash"] != prev_hash:
            return ChainReport(
                checked, sequence, f"sequence {sequence} does not follow its predecessor", anchored
            )
        content_hash = recompute(record)
        if content_hash != record["hash"]:
            ack = acknowledged.get(sequence)
            if ack is None or (ack.stored_hash, ack.content_hash) != (record["hash"], content_hash):
                return ChainReport(
                    checked, sequence, f"sequence {sequence} was altered (hash mismatch)", anchored
                )
            accepted.append(sequence)
        anchor = by_sequence.get(sequence)
        if anchor is not None:
            if anchor.hash != record["hash"]:
                return ChainReport(
                    checked,
                    sequence,
                    f"sequence {sequence} differs from the signed checkpoint ({anchor.source}): "
                    f"history up to it was rewritten",
                    anchored,
                )
            anchored += 1
        prev_hash = record["hash"]
        expected_sequence += 1
        checked += 1
    beyond = [a for a in by_sequence.values() if a.sequence >= expected_sequence]
    if beyond:
        last = max(beyond, key=lambda a: a.sequence)
        return ChainReport(
            checked,
            expected_sequence,
            f"the chain ends at sequence {expected_sequence - 1} but a signed checkpoint "
            f"({last.source}) covers sequence {last.sequence}: events were removed",
            anchored,
        )
    suffix = f", {anchored} signed checkpoints matched" if anchored else ""
    for sequence in accepted:
        suffix += f"; sequence {sequence} re-anchored ({acknowledged[sequence].source})"
    return ChainReport(
        checked, None, f"{checked} events, chain intact{suffix}", anchored, tuple(accepted)
    )


def iter_chain_rows(queryset: Any, chunk_size: int = 5000) -> Iterator[tuple]:
    """Stream rows for `verify` without loading the table."""
    return queryset.order_by("sequence").values_list(*CHAIN_FIELDS).iterator(chunk_size=chunk_size)
