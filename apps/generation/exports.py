import csv
import io
import json
from collections.abc import Iterator
from enum import StrEnum

from django.core.serializers.json import DjangoJSONEncoder
from django.db.models import QuerySet
from django.http import StreamingHttpResponse

from apps.generation.models import Generation

COLUMNS = (
    "row_index",
    "status",
    "variables",
    "output_text",
    "output_json",
    "errors",
    "target_used",
    "input_tokens",
    "output_tokens",
    "latency_ms",
    "cost",
)


class ResultFormat(StrEnum):
    JSONL = "jsonl"
    CSV = "csv"


def _rows(results: QuerySet[Generation]) -> Iterator[dict]:
    for values in results.values_list(*COLUMNS).iterator(chunk_size=1000):
        yield dict(zip(COLUMNS, values, strict=True))


def iter_jsonl(results: QuerySet[Generation]) -> Iterator[str]:
    for row in _rows(results):
        yield json.dumps(row, cls=DjangoJSONEncoder, ensure_ascii=False) + "\n"


def iter_csv(results: QuerySet[Generation]) -> Iterator[str]:
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(COLUMNS)
    for row in _rows(results):
        for key in ("variables", "output_json", "errors"):
            row[key] = json.dumps(row[key], cls=DjangoJSONEncoder, ensure_ascii=False)
        writer.writerow([row[c] for c in COLUMNS])
        if buffer.tell() > 64 * 1024:
            yield buffer.getvalue()
            buffer.seek(0)
            buffer.truncate()
    yield buffer.getvalue()


def streaming_response(
    results: QuerySet[Generation], fmt: ResultFormat, *, name: str
) -> StreamingHttpResponse:
    if fmt == ResultFormat.CSV:
        response = StreamingHttpResponse(iter_csv(results), content_type="text/csv; charset=utf-8")
    else:
        response = StreamingHttpResponse(
            iter_jsonl(results), content_type="application/x-ndjson; charset=utf-8"
        )
    response["Content-Disposition"] = f'attachment; filename="{name}.{fmt.value}"'
    return response
