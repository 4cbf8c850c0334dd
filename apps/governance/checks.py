"""The policy applied to one call: before generation on the variables and the rendered
messages, after it on the output. Pure functions of (rules, text); the generation
services call them for every path (playground, API, batch).

A finding is a dict: stage (input/output), rule (pii, blocked_term, topic, limit, output),
type, where (variables.<path>, messages[i], output), start/end (span in that text before
redaction) and action (flag, redact, block). Findings never hold the matched value.
"""

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from apps.governance import pii
from apps.governance.rules import BLOCK, OFF, REDACT

Finding = dict[str, Any]


@dataclass
class Checked:
    text: str
    findings: list[Finding] = field(default_factory=list)

    @property
    def blocked(self) -> bool:
        return any(f["action"] == BLOCK for f in self.findings)


@dataclass
class InputChecked:
    variables: Any
    messages: list[dict[str, str]]
    findings: list[Finding]

    @property
    def blocked(self) -> bool:
        return any(f["action"] == BLOCK for f in self.findings)


def _finding(
    stage: str, rule: str, kind: str, where: str, start: int, end: int, action: str
) -> Finding:
    return {
        "stage": stage,
        "rule": rule,
        "type": kind,
        "where": where,
        "start": start,
        "end": end,
        "action": action,
    }


def _term_pattern(terms: list[str], rules: dict[str, Any]) -> re.Pattern[str] | None:
    if not terms:
        return None
    alternatives = "|".join(re.escape(t) for t in sorted(terms, key=len, reverse=True))
    body = rf"(?<!\w)(?:{alternatives})(?!\w)" if rules["whole_word"] else f"(?:{alternatives})"
    return re.compile(body, 0 if rules["case_sensitive"] else re.IGNORECASE)


def scan_text(
    rules: dict[str, Any],
    text: str,
    *,
    stage: str,
    where: str,
    redactor: pii.Redactor,
    pii_on: bool = True,
    terms_on: bool = True,
    seen: set[tuple[str, str]] | None = None,
) -> Checked:
    """PII (per-type action) and blocked terms (always block) in one text; redacts.
    PII values in `seen` (type, value) were reported already and are skipped."""
    findings: list[Finding] = []
    to_redact = []
    if pii_on:
        active = {k for k, a in rules["pii"].items() if a != OFF}
        for m in pii.detect(text, active):
            if seen is not None and (m.type, text[m.start : m.end]) in seen:
                continue
            action = rules["pii"][m.type]
            findings.append(_finding(stage, "pii", m.type, where, m.start, m.end, action))
            if action == REDACT:
                to_redact.append(m)
    pattern = _term_pattern(rules["blocked_terms"], rules) if terms_on else None
    if pattern is not None:
        for m in pattern.finditer(text):
            findings.append(
                _finding(stage, "blocked_term", m.group().lower(), where, m.start(), m.end(), BLOCK)
            )
    return Checked(text=redactor.apply(text, to_redact) if to_redact else text, findings=findings)


def _walk(value: Any, path: str, visit: Callable[[str, str], str]) -> Any:
    """A copy of `value` with every string replaced by visit(path, string)."""
    if isinstance(value, str):
        return visit(path, value)
    if isinstance(value, dict):
        return {k: _walk(v, f"{path}.{k}" if path else str(k), visit) for k, v in value.items()}
    if isinstance(value, list):
        return [_walk(v, f"{path}[{i}]", visit) for i, v in enumerate(value)]
    return value


def _strings(value: Any) -> list[str]:
    found: list[str] = []
    _walk(value, "", lambda _p, s: found.append(s) or s)
    return found


def check_input(
    rules: dict[str, Any],
    variables: Any,
    *,
    render: Callable[[Any], list[dict[str, str]]],
    wants_json: bool,
    has_output_schema: bool,
) -> InputChecked:
    """PII in the variables (redacted ones are what gets rendered and stored), then what
    remains in the rendered messages (template text), blocked terms and the topic
    allow-list on the messages and variables, the input size and the schema rule."""
    redactor = pii.Redactor("\n".join(_strings(variables)))
    findings: list[Finding] = []
    # A flagged value of a variable is in the messages again: report it once.
    in_variables: set[tuple[str, str]] = set()

    def visit(path: str, text: str) -> str:
        checked = scan_text(
            rules, text, stage="input", where=f"variables.{path}", redactor=redactor, terms_on=False
        )
        findings.extend(checked.findings)
        in_variables.update((f["type"], text[f["start"] : f["end"]]) for f in checked.findings)
        return checked.text

    redacted = _walk(variables, "", visit)
    messages = []
    for i, message in enumerate(render(redacted)):
        checked = scan_text(
            rules,
            message["content"],
            stage="input",
            where=f"messages[{i}]",
            redactor=redactor,
            seen=in_variables,
        )
        findings.extend(checked.findings)
        messages.append({**message, "content": checked.text})
    topics = _term_pattern(rules["allowed_topics"], rules)
    variable_text = "\n".join(_strings(variables))
    if topics is not None and variable_text.strip() and not topics.search(variable_text):
        findings.append(_finding("input", "topic", "not_allowed", "variables", 0, 0, BLOCK))
    size = sum(len(m["content"]) for m in messages)
    if rules["max_input_chars"] is not None and size > rules["max_input_chars"]:
        findings.append(_finding("input", "limit", "max_input_chars", "messages", 0, size, BLOCK))
    if rules["output_require_schema"] and wants_json and not has_output_schema:
        findings.append(
            _finding("input", "output", "schema_required", "prompt_version", 0, 0, BLOCK)
        )
    return InputChecked(variables=redacted, messages=messages, findings=findings)


def check_output(rules: dict[str, Any], text: str) -> Checked:
    """PII leaking into the output (the per-type actions) and blocked terms in it."""
    return scan_text(
        rules,
        text,
        stage="output",
        where="output",
        redactor=pii.Redactor(text),
        pii_on=rules["output_pii"],
        terms_on=rules["output_blocked_terms"],
    )


def redact_value(value: Any, rules: dict[str, Any]) -> Any:
    """Structured output with the same PII redacted inside its strings."""
    redactor = pii.Redactor("\n".join(_strings(value)))
    return _walk(
        value,
        "",
        lambda _p, s: (
            scan_text(
                rules, s, stage="output", where="output", redactor=redactor, terms_on=False
            ).text
        ),
    )


def summary(findings: list[Finding]) -> str:
    """ "2 e-mail address(es) (redact), blocked term 'acme' (block)" for messages."""
    counts: dict[tuple[str, str, str], int] = {}
    for f in findings:
        key = (f["rule"], f["type"], f["action"])
        counts[key] = counts.get(key, 0) + 1
    parts = []
    for (rule, kind, action), n in counts.items():
        label = {
            "pii": pii.LABELS.get(kind, kind),
            "blocked_term": f"blocked term '{kind}'",
            "topic": "no allowed topic",
            "limit": f"limit {kind}",
            "output": "JSON prompt without an output schema",
        }[rule]
        parts.append(f"{n} × {label} ({action})")
    return ", ".join(parts)
