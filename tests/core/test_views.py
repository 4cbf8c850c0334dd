"""The view helpers every app shares (apps/core/views.py), and that no app copies them."""

import ast
from pathlib import Path

import pytest

from apps.core.exceptions import NotFound, PermissionDenied, ValidationFailed
from apps.core.views import form_error, number_or_text, parse_float, parse_int

APPS = Path(__file__).resolve().parents[2] / "apps"
# Names the per-module copies had; their one home is apps/core/views.py.
COPIED_HELPERS = {"_partial", "_inline", "_int", "_number", "_number_or_text"}


def test_no_view_module_defines_its_own_copy_of_a_shared_helper() -> None:
    copies = []
    for path in sorted(APPS.rglob("*.py")):
        if "views" not in path.name and path.parent.name != "views":
            continue
        for node in ast.parse(path.read_text()).body:
            if isinstance(node, ast.FunctionDef) and node.name in COPIED_HELPERS:
                copies.append(f"{path.relative_to(APPS.parent)}:{node.lineno} {node.name}")
    assert copies == []


@pytest.mark.parametrize(
    ("raw", "expected"), [("", None), (None, None), (" 12 ", 12), ("-3", -3), ("0", 0)]
)
def test_parse_int_reads_whole_numbers(raw, expected) -> None:
    assert parse_int(raw, field="batch_size") == expected


def test_parse_int_names_the_field_and_what_was_typed() -> None:
    with pytest.raises(ValidationFailed) as caught:
        parse_int("many", field="batch_size")
    assert caught.value.field == "batch_size"
    assert caught.value.message == "Batch size must be a whole number (got 'many')."
    with pytest.raises(ValidationFailed, match=r"^Line cannot be negative \(got -1\)\.$"):
        parse_int("-1", field="line", label="Line", minimum=0)
    with pytest.raises(ValidationFailed, match=r"must be at least 1 \(got 0\)"):
        parse_int("0", field="n", minimum=1)


@pytest.mark.parametrize("raw", ["nan", "inf", "-inf", "half"])
def test_parse_float_refuses_what_is_not_a_finite_number(raw) -> None:
    with pytest.raises(ValidationFailed) as caught:
        parse_float(raw, field="eval_fraction")
    assert caught.value.field == "eval_fraction"
    assert f"(got '{raw}')" in caught.value.message


def test_parse_float() -> None:
    assert parse_float(" 0.25 ", field="eval_fraction") == 0.25
    assert parse_float("", field="eval_fraction") is None


@pytest.mark.parametrize(
    ("raw", "expected"),
    [("", None), ("3", 3), ("2.5", 2.5), ("lots", "lots"), ("nan", "nan"), ("1e999", "1e999")],
)
def test_number_or_text(raw, expected) -> None:
    value = number_or_text(raw)
    assert value == expected and type(value) is type(expected)


def test_form_error_raises_a_refused_permission_again() -> None:
    shown = NotFound("gone")
    assert form_error(shown) is shown
    with pytest.raises(PermissionDenied):
        form_error(PermissionDenied("no"))
