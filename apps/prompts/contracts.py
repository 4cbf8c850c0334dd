"""Prompt contracts: JSON Schemas for inputs and outputs, and sandboxed rendering.

Messages are Jinja2 templates rendered in a budgeted SandboxedEnvironment
(`apps/prompts/sandbox.py`) with StrictUndefined: a template cannot reach Python
internals (`__class__`, `__globals__`, …) or run past its budget, and a variable
that was not passed is an error, never an empty string: an optional variable is
guarded with `{% if x is defined %}` or `{{ x | default("…") }}`. Literal braces
(for example a JSON example inside a prompt) go in a raw block:

    Answer like this: {% raw %}{"label": "...", "score": 0.9}{% endraw %}
"""

import re
from dataclasses import dataclass, field
from typing import Any

import jsonschema
from jinja2 import TemplateError, TemplateSyntaxError, meta

from apps.core.exceptions import ValidationFailed
from apps.generation.structured import broken_ref
from apps.prompts import sandbox
from apps.prompts.sandbox import TemplateTooExpensive

ROLES = ("system", "user", "assistant")
MAX_MESSAGES = 50
MAX_CONTENT = 100_000
MAX_RENDERED = 1_000_000
SchemaValidator = jsonschema.Draft202012Validator

_env = sandbox.env


def too_expensive(index: int, exc: TemplateTooExpensive) -> str:
    """The editor numbers messages from 1; the API names them messages[i]."""
    return f"Message {index + 1} (messages[{index}]) is too expensive to render: {exc}"


@dataclass
class ContractReport:
    """What a save found: errors refuse the save, warnings are kept on the version."""

    errors: list[dict[str, Any]] = field(default_factory=list)
    warnings: list[dict[str, Any]] = field(default_factory=list)
    variables: set[str] = field(default_factory=set)

    def error(self, where: str, message: str, **extra: Any) -> None:
        self.errors.append({"where": where, "message": message, **extra})

    def warn(self, where: str, message: str, **extra: Any) -> None:
        self.warnings.append({"where": where, "message": message, **extra})

    def raise_if_errors(self) -> None:
        if self.errors:
            first = self.errors[0]
            more = f" (and {len(self.errors) - 1} more)" if len(self.errors) > 1 else ""
            raise ValidationFailed(
                f"{first['where']}: {first['message']}{more}",
                field=first["where"],
                extra=self.errors,
            )


def _column(source: str, lineno: int, message: str) -> int:
    """Jinja reports only the line; point at the tag that most likely broke it."""
    lines = source.split("\n")
    line = lines[lineno - 1] if 0 < lineno <= len(lines) else ""
    quoted = re.search(r"unexpected '([^']+)'", message)
    if quoted and quoted.group(1) in line:
        return line.rindex(quoted.group(1)) + 1
    named = re.search(r"(?:filter|test|tag) named '([^']+)'|unknown tag '([^']+)'", message)
    if named:
        word = named.group(1) or named.group(2)
        if word in line:
            return line.index(word) + 1
    openers = [line.rfind(o) for o in ("{{", "{%", "{#")]
    best = max(openers)
    return best + 1 if best >= 0 else max(len(line), 1)


def check_json_schema(schema: Any, where: str, report: ContractReport) -> bool:
    if not isinstance(schema, dict):
        report.error(where, "must be a JSON object (a JSON Schema)")
        return False
    try:
        SchemaValidator.check_schema(schema)
    except jsonschema.SchemaError as exc:
        path = "".join(f"[{p!r}]" if isinstance(p, int) else f".{p}" for p in exc.path)
        report.error(f"{where}{path}", f"invalid JSON Schema: {exc.message}")
        return False
    found = broken_ref(schema)
    if found:
        report.error(f"{where}{found[0][1:]}", f"invalid JSON Schema: {found[1]}")
        return False
    return True


def check_messages(messages: Any, report: ContractReport) -> list[tuple[int, dict[str, str]]]:
    """Shape of the message list; returns the well-formed messages with their positions."""
    if not isinstance(messages, list) or not messages:
        report.error("messages", "at least one message is required")
        return []
    if len(messages) > MAX_MESSAGES:
        report.error("messages", f"{len(messages)} messages; the limit is {MAX_MESSAGES}")
    clean = []
    for i, message in enumerate(messages):
        where = f"messages[{i}]"
        if not isinstance(message, dict):
            report.error(where, "must be an object with 'role' and 'content'")
            continue
        unknown = set(message) - {"role", "content"}
        if unknown:
            report.error(where, f"unknown field(s): {', '.join(sorted(unknown))}")
        role, content = message.get("role"), message.get("content")
        if role not in ROLES:
            report.error(f"{where}.role", f"must be one of {', '.join(ROLES)} (got {role!r})")
        if not isinstance(content, str) or not content.strip():
            report.error(f"{where}.content", "must be non-empty text")
            continue
        if len(content) > MAX_CONTENT:
            report.error(
                f"{where}.content", f"{len(content)} characters; the limit is {MAX_CONTENT}"
            )
        clean.append((i, {"role": role, "content": content}))
    return clean


def check_templates(
    messages: list[tuple[int, dict[str, str]]], input_schema: dict | None, report: ContractReport
) -> None:
    """Parse every message; compare the variables used with those the schema declares."""
    used: set[str] = set()
    unreadable = False
    for i, message in messages:
        try:
            with sandbox.budget():
                ast = _env.parse(message["content"])
                sandbox.constant_cost(ast)
                # Unknown filters and tests surface only when compiling.
                _env.compile(ast)
        except TemplateTooExpensive as exc:
            report.error(f"messages[{i}].content", too_expensive(i, exc))
            continue
        except RecursionError:
            report.error(f"messages[{i}].content", "the template is nested too deeply")
            continue
        except TemplateSyntaxError as exc:
            lineno = exc.lineno or 1
            report.error(
                f"messages[{i}].content",
                f"template syntax error at line {lineno}, column "
                f"{_column(message['content'], lineno, exc.message or '')}: {exc.message}",
                line=lineno,
                column=_column(message["content"], lineno, exc.message or ""),
            )
            unreadable = True
            continue
        used |= meta.find_undeclared_variables(ast)
    report.variables = used
    if input_schema is None:
        return
    declared = set((input_schema.get("properties") or {}).keys())
    for name in sorted(used - declared):
        report.error(
            "input_schema",
            f"variable '{name}' is used in the messages but not declared in the input schema",
        )
    # A message that does not parse may well use the variables it seems not to: no
    # "never used" warnings until every message parses.
    never_used = set() if unreadable else set(input_schema.get("required") or []) - used
    for name in sorted(never_used):
        report.warn(
            "input_schema",
            f"required variable '{name}' is never used in the messages",
        )


def validate_variables(schema: dict, variables: Any) -> list[dict[str, str]]:
    """Every schema error, each with its JSON path ($.customer.name)."""
    validator = SchemaValidator(schema, format_checker=SchemaValidator.FORMAT_CHECKER)
    errors = sorted(validator.iter_errors(variables), key=lambda e: list(e.absolute_path))
    return [{"path": e.json_path, "message": e.message} for e in errors]


_MESSAGE_PATH = re.compile(r"^messages\[(\d+)\](?:\.(role|content))?(.*)$")


def where_label(where: str) -> str:
    """A person's name for an error's place: messages[1].content is "Message 2" (as the
    editor numbers messages, from 1), messages[0].role "Message 1, role"; other places
    (input_schema, $.customer.name, model.temperature) as they are."""
    match = _MESSAGE_PATH.match(where or "")
    if not match:
        return where
    number, part, rest = int(match.group(1)) + 1, match.group(2), match.group(3)
    return f"Message {number}" + (", role" if part == "role" else "") + rest


class RenderFailed(ValidationFailed):
    pass


def render_messages(
    messages: list[dict[str, str]], input_schema: dict, variables: Any
) -> list[dict[str, str]]:
    """Validate variables against the input schema, then render each message."""
    errors = validate_variables(input_schema, variables)
    if errors:
        raise RenderFailed(
            f"{len(errors)} variable error(s): "
            + "; ".join(f"{e['path']}: {e['message']}" for e in errors[:5]),
            field="variables",
            extra=errors,
        )
    rendered = []
    total = 0
    # One budget for the whole prompt (apps/prompts/sandbox.py); the output is counted
    # as it is produced, so a loop cannot build gigabytes before the size check.
    with sandbox.budget():
        for i, message in enumerate(messages):
            where = f"messages[{i}].content"
            chunks = []
            try:
                for chunk in _env.from_string(message["content"]).generate(**variables):
                    total += len(chunk)
                    if total > MAX_RENDERED:
                        raise RenderFailed(
                            f"the rendered prompt exceeds {MAX_RENDERED} characters", field=where
                        )
                    chunks.append(chunk)
            except TemplateTooExpensive as exc:
                message_text = too_expensive(i, exc)
                raise RenderFailed(
                    message_text, field=where, extra=[{"path": where, "message": message_text}]
                ) from exc
            except (
                TemplateError,
                TypeError,
                ValueError,
                ArithmeticError,
                LookupError,
                RecursionError,
                MemoryError,
            ) as exc:
                # Template code can fail like any expression ({{ name + 1 }}, {{ 1/0 }}).
                raise RenderFailed(
                    f"Message {i + 1} could not be rendered: {exc or type(exc).__name__}",
                    field=where,
                    extra=[{"path": f"messages[{i}]", "message": str(exc)}],
                ) from exc
            rendered.append({"role": message["role"], "content": "".join(chunks)})
    return rendered
