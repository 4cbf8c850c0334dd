"""Streamed CSV and JSONL renderings of audit events (never the whole table in memory)."""

import csv
import io
import json
from collections.abc import Iterator
from enum import StrEnum

from django.core.serializers.json import DjangoJSONEncoder
from django.db.models import QuerySet
from django.http import StreamingHttpResponse
from django.utils import timezone

from apps.audit.chain import CHAIN_FIELDS
from apps.audit.models import AuditEvent

# The export carries every column the hash covers, so an exported log can be re-verified.
COLUMNS = CHAIN_FIELDS


class ExportFormat(StrEnum):
    CSV = "csv"
    JSONL = "jsonl"


def _rows(events: QuerySet[AuditEvent]) -> Iterator[dict]:
    for values in events.values_list(*COLUMNS).iterator(chunk_size=2000):
        row = dict(zip(COLUMNS, values, strict=True))
        row["created_at"] = row["created_at"].isoformat()
        yield row


def iter_jsonl(events: QuerySet[AuditEvent]) -> Iterator[str]:
    for row in _rows(events):
        yield json.dumps(row, cls=DjangoJSONEncoder, ensure_ascii=False, sort_keys=True) + "\n"


def iter_csv(events: QuerySet[AuditEvent]) -> Iterator[str]:
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(COLUMNS)
    for row in _rows(events):
        row["data"] = json.dumps(row["data"], cls=DjangoJSONEncoder, sort_keys=True)
        writer.writerow([row[c] if row[c] is not None else "" for c in COLUMNS])
        if buffer.tell() > 64 * 1024:
            yield buffer.getvalue()
            buffer.seek(0)
            buffer.truncate()
    yield buffer.getvalue()


def streaming_response(events: QuerySet[AuditEvent], fmt: ExportFormat) -> StreamingHttpResponse:
    stamp = timezone.now().strftime("%Y%m%dT%H%M%SZ")
    if fmt == ExportFormat.CSV:
        response = StreamingHttpResponse(iter_csv(events), content_type="text/csv; charset=utf-8")
    else:
        response = StreamingHttpResponse(
            iter_jsonl(events), content_type="application/x-ndjson; charset=utf-8"
        )
    response["Content-Disposition"] = f'attachment; filename="audit-{stamp}.{fmt.value}"'
    return response
