"""Reading and checking dataset rows: every problem found, each with its line number.

Row shapes (one JSON object per JSONL line; an optional "meta" object rides along with
every format and is not trained on — versions built from review exports and batch jobs
keep their lineage there):

- chat: {"messages": [{"role", "content"}, ...]}. Roles are system, user and assistant;
  a system message may only come first; at least one user message; the last message is
  the assistant's, because that is the turn trained on.
- prompt_completion: {"prompt": str, "completion": str}.
- variables: {"variables": {...}, "output": str}; the variables must pass the dataset's
  prompt version's input schema, and the rendered prompt plus output is what is counted
  against the context.

CSV holds prompt_completion (header `prompt,completion`) and variables (header
`variables,output`, the variables column a JSON object). Chat rows need JSONL.
"""

import csv
import hashlib
import io
import json
from dataclasses import dataclass, field
from typing import Any

from apps.core.exceptions import ApplicationError, ValidationFailed
from apps.core.uploads import RowError, checked, json_value
from apps.finetune.models import DatasetFormat
from apps.finetune.tokens import TokenCounter
from apps.prompts.contracts import render_messages, validate_variables
from apps.prompts.models import PromptVersion

MAX_UPLOAD_BYTES = 50 * 1024 * 1024
MAX_ROWS = 100_000
MAX_REPORTED_ERRORS = 100
ROLES = ("system", "user", "assistant")
FIELDS = {
    DatasetFormat.CHAT: ("messages",),
    DatasetFormat.PROMPT_COMPLETION: ("prompt", "completion"),
    DatasetFormat.VARIABLES: ("variables", "output"),
}
OPTIONAL = ("meta",)
FORMAT_LABEL = {
    DatasetFormat.CHAT: "chat",
    DatasetFormat.PROMPT_COMPLETION: "prompt/completion",
    DatasetFormat.VARIABLES: "variables/output",
}


class RowsRefused(ValidationFailed):
    """The upload (or built rows) failed: `extra` holds the first 100 {line, message}."""

    def __init__(self, errors: list[dict[str, Any]], *, total_lines: int) -> None:
        self.total = len(errors)
        shown = errors[:MAX_REPORTED_ERRORS]
        lines = len({e["line"] for e in errors})
        problems = f" ({self.total} problems)" if self.total != lines else ""
        more = (
            f"; the first {MAX_REPORTED_ERRORS} problems are listed, "
            f"{self.total - MAX_REPORTED_ERRORS} more not shown"
            if self.total > MAX_REPORTED_ERRORS
            else ""
        )
        # The problems, by line, are `extra`: the message counts, it does not repeat them.
        super().__init__(
            f"{lines} of {total_lines} line{'s' if total_lines != 1 else ''} refused{problems}"
            f" — nothing was stored{more}.",
            field="file",
            extra=shown,
        )

    def as_dict(self) -> dict[str, Any]:
        return {**super().as_dict(), "error_count": self.total}


@dataclass
class CheckedRows:
    rows: list[dict[str, Any]] = field(default_factory=list)
    tokens: list[int] = field(default_factory=list)


def content_hash(row: dict[str, Any]) -> str:
    """The hash of what is trained on (the row without "meta" and "split"): diffs and the
    split use it, so lineage notes never make two equal rows differ."""
    body = {k: v for k, v in row.items() if k not in ("meta", "split")}
    return hashlib.sha256(
        json.dumps(body, ensure_ascii=False, sort_keys=True, separators=(",", ":")).encode()
    ).hexdigest()


def parse_upload(
    content: bytes, filename: str, fmt: str
) -> tuple[list[tuple[int, Any]], list[dict[str, Any]]]:
    """(values with their line numbers, errors) from JSONL or CSV. Refuses outright only
    what cannot be read at all (size, encoding, extension, empty, chat in CSV)."""
    if len(content) > MAX_UPLOAD_BYTES:
        raise ValidationFailed(
            f"'{filename}' is {len(content)} bytes; the limit is {MAX_UPLOAD_BYTES}.",
            field="file",
        )
    try:
        text = content.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise ValidationFailed(f"'{filename}' is not UTF-8 ({exc}).", field="file") from exc
    if not text.strip():
        raise ValidationFailed(f"'{filename}' is empty: no rows to store.", field="file")
    name = filename.lower()
    if name.endswith((".jsonl", ".ndjson")):
        values, errors = _parse_jsonl(text)
    elif name.endswith(".csv"):
        if fmt == DatasetFormat.CHAT:
            raise ValidationFailed(
                "Chat rows cannot be uploaded as CSV: upload JSONL with one "
                '{"messages": [...]} object per line.',
                field="file",
            )
        values, errors = _parse_csv(text, fmt)
    else:
        raise ValidationFailed(f"'{filename}': upload a .jsonl or .csv file.", field="file")
    if len(values) > MAX_ROWS:
        raise ValidationFailed(
            f"'{filename}' has {len(values)} rows; the limit is {MAX_ROWS}.", field="file"
        )
    return values, errors


def _parse_jsonl(text: str) -> tuple[list[tuple[int, Any]], list[dict[str, Any]]]:
    values: list[tuple[int, Any]] = []
    errors: list[dict[str, Any]] = []
    for line_no, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue  # blank lines (a trailing newline, spacing) hold no row
        try:
            values.append((line_no, json_value(line)))
        except RowError as exc:
            errors.append({"line": line_no, "message": str(exc)})
    return values, errors


def _parse_csv(text: str, fmt: str) -> tuple[list[tuple[int, Any]], list[dict[str, Any]]]:
    expected = FIELDS[DatasetFormat(fmt)]
    reader = csv.reader(io.StringIO(text, newline=""), strict=True)
    values: list[tuple[int, Any]] = []
    errors: list[dict[str, Any]] = []
    try:
        header = next(reader)
    except csv.Error as exc:
        return [], [{"line": reader.line_num, "message": f"CSV quoting error: {exc}"}]
    header = [h.strip() for h in header]
    missing = [c for c in expected if c not in header]
    unknown = [c for c in header if c not in expected]
    if missing or unknown:
        problems = []
        if missing:
            problems.append(f"missing column(s) {', '.join(missing)}")
        if unknown:
            problems.append(f"unknown column(s) {', '.join(unknown)}")
        message = f"header: {'; '.join(problems)} (expected {','.join(expected)})"
        return [], [{"line": 1, "message": message}]
    start = reader.line_num + 1
    while True:
        try:
            record = next(reader)
        except StopIteration:
            break
        except csv.Error as exc:
            errors.append(
                {
                    "line": reader.line_num,
                    "message": f"CSV quoting error: {exc}; the rest of the file was not read",
                }
            )
            break
        line_no, start = start, reader.line_num + 1
        if not record or not any(cell.strip() for cell in record):
            continue
        if len(record) != len(header):
            errors.append(
                {
                    "line": line_no,
                    "message": f"{len(record)} values for {len(header)} header columns",
                }
            )
            continue
        row: dict[str, Any] = dict(zip(header, record, strict=True))
        try:
            if fmt == DatasetFormat.VARIABLES:
                row["variables"] = json_value(row["variables"])
            values.append((line_no, checked(row)))
        except RowError as exc:
            column = "variables column: " if fmt == DatasetFormat.VARIABLES else ""
            errors.append({"line": line_no, "message": f"{column}{exc}"})
    return values, errors


def _detect(value: dict[str, Any]) -> str | None:
    for fmt, names in FIELDS.items():
        if any(name in value for name in names):
            return fmt
    return None


def _text(value: Any, name: str) -> str | None:
    """None when fine, else the problem with the string field `name`."""
    if not isinstance(value, str):
        return f"{name} must be a string"
    if not value.strip():
        return f"{name} is empty"
    return None


def _check_messages(messages: Any) -> list[str]:
    if not isinstance(messages, list) or not messages:
        return ["messages must be a non-empty list"]
    problems = []
    for i, message in enumerate(messages):
        where = f"messages[{i}]"
        if not isinstance(message, dict):
            problems.append(f"{where} must be an object with role and content")
            continue
        unknown = sorted(set(message) - {"role", "content"})
        if unknown:
            problems.append(f"{where} has unknown key(s) {', '.join(unknown)}")
        role = message.get("role")
        if role is None:
            problems.append(f"{where} has no role")
        elif role not in ROLES:
            problems.append(f"{where}.role '{role}' is not one of {', '.join(ROLES)}")
        elif role == "system" and i > 0:
            problems.append(f"{where} is a system message; only the first message may be")
        if "content" not in message:
            problems.append(f"{where} has no content")
        else:
            problem = _text(message["content"], f"{where}.content")
            if problem:
                problems.append(problem)
    roles = [m.get("role") for m in messages if isinstance(m, dict)]
    if "user" not in roles:
        problems.append("messages have no user message")
    if roles and roles[-1] != "assistant":
        problems.append("the last message must be the assistant's (the turn trained on)")
    return problems


def _training_text(
    row: dict[str, Any], fmt: str, version: PromptVersion | None
) -> tuple[str, list[str]]:
    """The text counted against the context, and problems found while building it."""
    if fmt == DatasetFormat.CHAT:
        return "\n".join(f"{m['role']}: {m['content']}" for m in row["messages"]), []
    if fmt == DatasetFormat.PROMPT_COMPLETION:
        return f"{row['prompt']}\n{row['completion']}", []
    assert version is not None
    try:
        rendered = render_messages(version.messages, version.input_schema, row["variables"])
    except ApplicationError as exc:
        return "", [f"variables do not render: {exc.message}"]
    text = "\n".join(f"{m['role']}: {m['content']}" for m in rendered)
    return f"{text}\nassistant: {row['output']}", []


def check_rows(
    values: list[tuple[int, Any]],
    errors: list[dict[str, Any]],
    *,
    fmt: str,
    version: PromptVersion | None,
    counter: TokenCounter,
    context_length: int,
) -> CheckedRows:
    """Check every value as a row of `fmt`; refuse with every problem (sorted by line,
    first 100 listed) or return the rows and their token counts."""
    unreadable = {e["line"] for e in errors}
    errors = list(errors)
    checked = CheckedRows()
    expected = FIELDS[DatasetFormat(fmt)]
    first_format: tuple[int, str] | None = None
    for line_no, value in values:
        problems = _check_row(value, fmt, expected, version, first_format)
        if isinstance(value, dict) and first_format is None and (found := _detect(value)):
            first_format = (line_no, found)
        if not problems:
            text, problems = _training_text(value, fmt, version)
            if not problems:
                tokens = counter.count(text)
                if tokens > context_length:
                    problems = [
                        f"row is {tokens} tokens ({counter.name}); the model's context is "
                        f"{context_length}"
                    ]
        if problems:
            errors.extend({"line": line_no, "message": p} for p in problems)
            continue
        checked.rows.append(value)
        checked.tokens.append(tokens)
    if errors:
        total = len(unreadable | {line_no for line_no, _ in values})
        raise RowsRefused(sorted(errors, key=lambda e: e["line"]), total_lines=total)
    return checked


def _check_row(
    value: Any,
    fmt: str,
    expected: tuple[str, ...],
    version: PromptVersion | None,
    first_format: tuple[int, str] | None,
) -> list[str]:
    if not isinstance(value, dict):
        return [f"expected a JSON object, got {type(value).__name__}"]
    found = _detect(value)
    if found is not None and found != fmt:
        where = (
            f"line {first_format[0]} is {FORMAT_LABEL[first_format[1]]}"
            if first_format
            else "this dataset"
        )
        return [
            f"mixed formats: this row is {FORMAT_LABEL[found]}, {where}; "
            f"the dataset holds {FORMAT_LABEL[fmt]} rows"
        ]
    problems = [f"missing required field {name}" for name in expected if name not in value]
    unknown = sorted(set(value) - set(expected) - set(OPTIONAL))
    if unknown:
        problems.append(f"unknown key(s) {', '.join(unknown)}")
    if "meta" in value and not isinstance(value["meta"], dict):
        problems.append("meta must be an object")
    if problems:
        return problems
    if fmt == DatasetFormat.CHAT:
        return _check_messages(value["messages"])
    if fmt == DatasetFormat.PROMPT_COMPLETION:
        found_problems = (
            _text(value["prompt"], "prompt"),
            _text(value["completion"], "completion"),
        )
        return [p for p in found_problems if p]
    if not isinstance(value["variables"], dict):
        return ["variables must be an object"]
    problems = [p for p in (_text(value["output"], "output"),) if p]
    assert version is not None
    for error in validate_variables(version.input_schema, value["variables"]):
        problems.append(f"variables {error['path']}: {error['message']}")
    return problems


SAMPLE_CHAT = [
    ("Where is my parcel?", "It left our warehouse today and arrives tomorrow."),
    ("Can I change the delivery address?", "Yes, until the parcel ships: open the order."),
]


def sample_rows(dataset_format: str, prompt_version: PromptVersion | None) -> list[dict]:
    """Rows of the format that pass its checks, for "download a sample file": chat and
    prompt/completion rows with a made-up support exchange; variables rows from the
    prompt version's input schema (apps.prompts.variables.sample_rows)."""
    from apps.prompts.variables import sample_rows as sample_variables

    if dataset_format == DatasetFormat.CHAT:
        return [
            {
                "messages": [
                    {"role": "system", "content": "You answer customers briefly."},
                    {"role": "user", "content": question},
                    {"role": "assistant", "content": answer},
                ]
            }
            for question, answer in SAMPLE_CHAT
        ]
    if dataset_format == DatasetFormat.PROMPT_COMPLETION:
        return [{"prompt": q, "completion": a} for q, a in SAMPLE_CHAT]
    schema = prompt_version.input_schema if prompt_version is not None else {}
    return [
        {"variables": variables, "output": "The answer you want for these variables."}
        for variables in sample_variables(schema)
    ]
