"""Diffs between two versions: side-by-side text, configuration, and a schema diff
that says which changes break callers.

Input schema (what callers send): a change is breaking when a request that was
valid before may now be refused — a required variable added, a variable removed,
a variable becoming required, a type, enum or bound narrowed.
Output schema (what callers receive): breaking when a consumer may no longer get
what it relied on — a property removed or no longer required (no longer
guaranteed), a type widened, the structured output dropped.
"""

import difflib
from dataclasses import asdict, dataclass
from typing import Any

from apps.prompts.models import PromptVersion

_LOWER_BOUNDS = ("minimum", "exclusiveMinimum", "minLength", "minItems", "minProperties")
_UPPER_BOUNDS = ("maximum", "exclusiveMaximum", "maxLength", "maxItems", "maxProperties")
_ALL_TYPES = frozenset({"string", "number", "integer", "boolean", "object", "array", "null"})


@dataclass(frozen=True)
class SchemaChange:
    side: str  # "input" or "output"
    path: str
    change: str
    breaking: bool
    detail: str


def _types(node: dict) -> frozenset[str]:
    t = node.get("type")
    if t is None:
        return _ALL_TYPES
    types = frozenset([t] if isinstance(t, str) else t)
    # integer is a subset of number
    return types | {"integer"} if "number" in types else types


def _compare_node(side: str, path: str, old: dict, new: dict, out: list[SchemaChange]) -> None:
    input_side = side == "input"
    old_t, new_t = _types(old), _types(new)
    if old_t != new_t:
        narrowed = new_t < old_t
        widened = new_t > old_t
        kind = "type narrowed" if narrowed else "type widened" if widened else "type changed"
        breaking = (narrowed or not widened) if input_side else (widened or not narrowed)
        out.append(
            SchemaChange(
                side,
                path,
                kind,
                breaking,
                f"{old.get('type', 'any')} → {new.get('type', 'any')}",
            )
        )
    if "enum" in old or "enum" in new:
        old_e = old.get("enum")
        new_e = new.get("enum")
        if old_e != new_e:
            if new_e is None:
                removed, added = [], ["any value"]
            elif old_e is None:
                removed, added = ["any value"], []
            else:
                removed = [v for v in old_e if v not in new_e]
                added = [v for v in new_e if v not in old_e]
            if removed:
                out.append(
                    SchemaChange(
                        side, path, "enum narrowed", input_side, f"no longer allowed: {removed}"
                    )
                )
            if added:
                out.append(
                    SchemaChange(
                        side, path, "enum widened", not input_side, f"newly allowed: {added}"
                    )
                )
    for key in _LOWER_BOUNDS + _UPPER_BOUNDS:
        if old.get(key) == new.get(key):
            continue
        o, n = old.get(key), new.get(key)
        lower = key in _LOWER_BOUNDS
        if o is None:
            tighter = True
        elif n is None:
            tighter = False
        else:
            tighter = n > o if lower else n < o
        out.append(
            SchemaChange(
                side,
                path,
                f"{key} {'tightened' if tighter else 'relaxed'}",
                tighter if input_side else not tighter,
                f"{key}: {o} → {n}",
            )
        )
    if "object" in old_t & new_t:
        _compare_properties(side, path, old, new, out)
    if "array" in old_t & new_t and isinstance(old.get("items"), dict):
        new_items = new.get("items") if isinstance(new.get("items"), dict) else {}
        _compare_node(side, f"{path}[*]", old["items"], new_items, out)


def _compare_properties(
    side: str, path: str, old: dict, new: dict, out: list[SchemaChange]
) -> None:
    input_side = side == "input"
    old_p, new_p = old.get("properties") or {}, new.get("properties") or {}
    old_r, new_r = set(old.get("required") or []), set(new.get("required") or [])
    prefix = f"{path}." if path != "$" else "$."
    for name in sorted(set(old_p) | set(new_p)):
        where = f"{prefix}{name}"
        if name not in new_p:
            label = "variable removed" if input_side else "property removed"
            out.append(SchemaChange(side, where, label, True, f"'{name}' no longer exists"))
        elif name not in old_p:
            if input_side:
                required = name in new_r
                label = "required variable added" if required else "optional variable added"
                out.append(SchemaChange(side, where, label, required, f"'{name}' added"))
            else:
                out.append(SchemaChange(side, where, "property added", False, f"'{name}' added"))
        else:
            if name in new_r and name not in old_r:
                label = "became required" if input_side else "now guaranteed"
                out.append(SchemaChange(side, where, label, input_side, f"'{name}' is required"))
            elif name in old_r and name not in new_r:
                label = "became optional" if input_side else "no longer guaranteed"
                out.append(
                    SchemaChange(side, where, label, not input_side, f"'{name}' not required")
                )
            if isinstance(old_p[name], dict) and isinstance(new_p[name], dict):
                _compare_node(side, where, old_p[name], new_p[name], out)
    if (
        input_side
        and old.get("additionalProperties", True)
        and new.get("additionalProperties", True) is False
    ):
        out.append(
            SchemaChange(side, path, "extra variables refused", True, "additionalProperties: false")
        )


def schema_changes(old: PromptVersion, new: PromptVersion) -> list[SchemaChange]:
    out: list[SchemaChange] = []
    _compare_node("input", "$", old.input_schema, new.input_schema, out)
    old_json = old.output_format == PromptVersion.OutputFormat.JSON
    new_json = new.output_format == PromptVersion.OutputFormat.JSON
    if old_json and not new_json:
        out.append(SchemaChange("output", "$", "structured output dropped", True, "json → text"))
    elif new_json and not old_json:
        out.append(SchemaChange("output", "$", "structured output added", False, "text → json"))
    if old.output_schema and new.output_schema:
        _compare_node("output", "$", old.output_schema, new.output_schema, out)
    elif old.output_schema and not new.output_schema:
        out.append(SchemaChange("output", "$", "output schema removed", True, "no guarantees"))
    elif new.output_schema and not old.output_schema:
        out.append(SchemaChange("output", "$", "output schema added", False, "now validated"))
    return out


def _side_by_side(old: str, new: str) -> list[dict[str, Any]]:
    """Rows of (left line, right line, kind) for a two-column view."""
    a, b = old.split("\n"), new.split("\n")
    rows: list[dict[str, Any]] = []
    for tag, i1, i2, j1, j2 in difflib.SequenceMatcher(a=a, b=b, autojunk=False).get_opcodes():
        if tag == "equal":
            for k in range(i2 - i1):
                rows.append(
                    {
                        "kind": "equal",
                        "left_no": i1 + k + 1,
                        "left": a[i1 + k],
                        "right_no": j1 + k + 1,
                        "right": b[j1 + k],
                    }
                )
            continue
        span = max(i2 - i1, j2 - j1)
        for k in range(span):
            left = a[i1 + k] if i1 + k < i2 else None
            right = b[j1 + k] if j1 + k < j2 else None
            kind = (
                "changed"
                if left is not None and right is not None
                else ("removed" if right is None else "added")
            )
            rows.append(
                {
                    "kind": kind,
                    "left_no": i1 + k + 1 if left is not None else None,
                    "left": left,
                    "right_no": j1 + k + 1 if right is not None else None,
                    "right": right,
                }
            )
    return rows


def _flatten(value: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(value, dict):
        flat: dict[str, Any] = {}
        for k, v in value.items():
            flat.update(_flatten(v, f"{prefix}.{k}" if prefix else str(k)))
        return flat or {prefix: {}}
    return {prefix: value}


def version_diff(old: PromptVersion, new: PromptVersion) -> dict[str, Any]:
    messages = []
    for i in range(max(len(old.messages), len(new.messages))):
        o = old.messages[i] if i < len(old.messages) else None
        n = new.messages[i] if i < len(new.messages) else None
        messages.append(
            {
                "index": i,
                "old_role": o["role"] if o else None,
                "new_role": n["role"] if n else None,
                "changed": o != n,
                "rows": _side_by_side(o["content"] if o else "", n["content"] if n else ""),
            }
        )
    old_cfg = _flatten(
        {
            "model": old.model_settings,
            "fallback_target": old.fallback_target,
            "output_format": old.output_format,
        }
    )
    new_cfg = _flatten(
        {
            "model": new.model_settings,
            "fallback_target": new.fallback_target,
            "output_format": new.output_format,
        }
    )
    config = [
        {"key": k, "old": old_cfg.get(k), "new": new_cfg.get(k)}
        for k in sorted(set(old_cfg) | set(new_cfg))
        if old_cfg.get(k) != new_cfg.get(k)
    ]
    changes = schema_changes(old, new)
    return {
        "from_version": old.number,
        "to_version": new.number,
        "messages": messages,
        "config": config,
        "schema_changes": [asdict(c) for c in changes],
        "breaking": any(c.breaking for c in changes),
    }
