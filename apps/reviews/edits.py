"""A reviewer's edit of a generated output, shown as a word diff against the original
(the annotator and the item page): runs of equal, deleted and inserted text, whitespace
kept, so the page can render them with <del> and <ins>."""

import difflib
import json
import re
from typing import Any

_TOKENS = re.compile(r"\s+|[^\s]+")


def word_diff(original: str, edited: str) -> list[tuple[str, str]]:
    """[(kind, text)] with kind "equal", "delete" or "insert", in reading order."""
    a, b = _TOKENS.findall(original), _TOKENS.findall(edited)
    out: list[tuple[str, str]] = []
    matcher = difflib.SequenceMatcher(a=a, b=b, autojunk=False)
    for tag, i1, i2, j1, j2 in matcher.get_opcodes():
        if tag == "equal":
            out.append(("equal", "".join(a[i1:i2])))
            continue
        if i2 > i1:
            out.append(("delete", "".join(a[i1:i2])))
        if j2 > j1:
            out.append(("insert", "".join(b[j1:j2])))
    return out


def input_fields(inputs: Any) -> list[dict[str, Any]]:
    """An item's inputs as labelled fields: each top-level key with its value as text
    (strings as they are, anything else as indented JSON); long or multi-line values are
    shown as blocks."""
    if not isinstance(inputs, dict):
        text = json.dumps(inputs, indent=2, ensure_ascii=False)
        return [{"name": "", "label": "Inputs", "text": text, "block": True}]
    fields = []
    for name, value in inputs.items():
        text = value if isinstance(value, str) else json.dumps(value, indent=2, ensure_ascii=False)
        fields.append(
            {
                "name": name,
                "label": str(name).replace("_", " ").capitalize(),
                "text": text,
                "block": "\n" in text or len(text) > 80,
            }
        )
    return fields
