"""The Jinja2 sandbox every prompt template is checked and rendered in, with a budget.

Jinja's SandboxedEnvironment stops attribute escapes (`__class__`, `__globals__`), not
work: `{{ 9**(9**8) }}` is folded while compiling and runs for minutes in C, and two
nested `range()` loops keep a worker busy for seconds. Here:

- `**`, `*`, `+` and `%` are intercepted (so never folded while compiling) and refuse a
  result larger than the limits before computing it;
- every loop iteration and every call costs one step; a render may take at most
  `STUDIO_TEMPLATE_MAX_STEPS` steps and `STUDIO_TEMPLATE_BUDGET_MS` milliseconds of wall-clock time,
  checked at each step;
- string methods and filters that can blow up a small input (`center`, `ljust`,
  `format` widths, `indent`, `slice`…) refuse outputs past `STUDIO_TEMPLATE_MAX_TEXT`.

Everything that parses, compiles or renders a prompt template goes through `budget()`
(`apps/prompts/contracts.py`), so check, save, render, generation, batches, evals and
fine-tuning share one limit.
"""

import operator
import re
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any

from django.conf import settings
from jinja2 import StrictUndefined, nodes, pass_eval_context
from jinja2 import filters as jinja_filters
from jinja2.sandbox import SandboxedEnvironment
from jinja2.visitor import NodeTransformer


class TemplateTooExpensive(Exception):
    """A template went past its budget; the message says which limit."""


@dataclass
class Budget:
    deadline: float
    budget_ms: int
    max_steps: int
    steps: int = 0

    def step(self) -> None:
        self.steps += 1
        if self.steps > self.max_steps:
            raise TemplateTooExpensive(
                f"it takes more than {self.max_steps} loop iterations and calls "
                "(STUDIO_TEMPLATE_MAX_STEPS)"
            )
        if time.monotonic() > self.deadline:
            raise TemplateTooExpensive(
                f"it takes more than {self.budget_ms} ms (STUDIO_TEMPLATE_BUDGET_MS)"
            )


_current: ContextVar[Budget | None] = ContextVar("template_budget", default=None)


def max_text() -> int:
    return int(settings.STUDIO_TEMPLATE_MAX_TEXT)


def max_int_bits() -> int:
    return int(settings.STUDIO_TEMPLATE_MAX_INT_BITS)


@contextmanager
def budget() -> Iterator[Budget]:
    """One budget for what runs inside: parse, compile and render of one message.
    Nested calls share the outer budget."""
    outer = _current.get()
    if outer is not None:
        yield outer
        return
    budget_ms = int(settings.STUDIO_TEMPLATE_BUDGET_MS)
    current = Budget(
        deadline=time.monotonic() + budget_ms / 1000,
        budget_ms=budget_ms,
        max_steps=int(settings.STUDIO_TEMPLATE_MAX_STEPS),
    )
    token = _current.set(current)
    try:
        yield current
    finally:
        _current.reset(token)


def _step() -> None:
    current = _current.get()
    if current is None:
        raise RuntimeError("a prompt template ran outside apps.prompts.sandbox.budget()")
    current.step()


def _too_long(what: str, size: int) -> TemplateTooExpensive:
    return TemplateTooExpensive(
        f"{what} would be {size} characters long; the limit is {max_text()} "
        "(STUDIO_TEMPLATE_MAX_TEXT)"
    )


def _check_int_bits(what: str, bits: int) -> None:
    if bits > max_int_bits():
        raise TemplateTooExpensive(
            f"{what} would be a number of about {bits} bits; the limit is {max_int_bits()} "
            "(STUDIO_TEMPLATE_MAX_INT_BITS)"
        )


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


_SIZED = (str, list, tuple)
# Widths and precisions in printf-style (%10.3f, %*d) and str.format ({:>10}, {:{}}) specs.
_PERCENT_SPEC = re.compile(r"%(?:\([^)]*\))?[#0\- +]*(\*|\d+)?(?:\.(\*|\d+))?")
_FORMAT_SPEC = re.compile(r"\{[^{}]*:([^{}]*(?:\{[^{}]*\}[^{}]*)*)\}")


def check_format_string(fmt: str, *, percent: bool) -> None:
    """Refuse a width or precision past the text limit, or one taken from an argument."""
    if percent:
        specs = [part for match in _PERCENT_SPEC.finditer(fmt) for part in match.groups()]
    else:
        specs = []
        for spec in _FORMAT_SPEC.findall(fmt):
            if "{" in spec:
                specs.append("*")
            specs.extend(re.findall(r"\d+", spec))
    for part in filter(None, specs):
        if part == "*":
            raise TemplateTooExpensive(
                "a format width or precision taken from an argument is not allowed in templates"
            )
        width = int(part) if len(part) <= 30 else 10**30
        if width > max_text():
            raise _too_long("a formatted value", width)


def guarded_binop(op: str, left: Any, right: Any) -> Any:
    """`left op right`, refused before it runs when the result would be too large."""
    if op == "**" and _is_int(left) and _is_int(right) and right > 0:
        _check_int_bits(f"{left} ** {right}", abs(left).bit_length() * right)
    elif op == "*":
        if _is_int(left) and _is_int(right):
            _check_int_bits("a product", left.bit_length() + right.bit_length())
        for seq, times in ((left, right), (right, left)):
            if isinstance(seq, _SIZED) and _is_int(times) and len(seq) * times > max_text():
                raise _too_long("a repeated value", len(seq) * times)
    elif op == "+" and isinstance(left, _SIZED) and isinstance(right, _SIZED):
        if len(left) + len(right) > max_text():
            raise _too_long("a concatenation", len(left) + len(right))
    elif op == "%" and isinstance(left, str):
        check_format_string(left, percent=True)
    return _BINOPS[op](left, right)


_BINOPS = {"**": operator.pow, "*": operator.mul, "+": operator.add, "%": operator.mod}


def _width(what: str, width: Any, count: int = 1) -> None:
    if _is_int(width) and width * count > max_text():
        raise _too_long(what, width * count)
    if isinstance(width, str) and len(width) * count > max_text():
        raise _too_long(what, len(width) * count)


def _center(value: Any, width: int = 80) -> str:
    _width("a centred value", width)
    return jinja_filters.do_center(value, width)


def _indent(value: str, width: int | str = 4, first: bool = False, blank: bool = False) -> str:
    _width("an indented value", width, str(value).count("\n") + 1)
    return jinja_filters.do_indent(value, width, first, blank)


def _slice(value: Iterable, slices: int, fill_with: Any = None) -> Iterator[list]:
    if _is_int(slices) and slices > int(settings.STUDIO_TEMPLATE_MAX_STEPS):
        raise TemplateTooExpensive(f"slice({slices}) makes too many slices")
    return jinja_filters.sync_do_slice(value, slices, fill_with)


def _replace(eval_ctx: Any, value: str, old: str, new: str, count: int | None = None) -> str:
    text, old, new = str(value), str(old), str(new)
    times = text.count(old) if old else len(text) + 1
    if count is not None and _is_int(count):
        times = min(times, max(count, 0))
    if len(text) + times * len(new) > max_text():
        raise _too_long("a replace() result", len(text) + times * len(new))
    return jinja_filters.do_replace(eval_ctx, value, old, new, count)


def _format(value: str, *args: Any, **kwargs: Any) -> str:
    check_format_string(str(value), percent=True)
    return jinja_filters.do_format(value, *args, **kwargs)


_WIDTH_METHODS = {"center", "ljust", "rjust", "zfill"}


def _check_str_method(method: Any, args: tuple, kwargs: dict) -> None:
    # The sandbox hands out str.format wrapped (functools.update_wrapper keeps __wrapped__).
    method = getattr(method, "__wrapped__", method)
    owner = getattr(method, "__self__", None)
    if not isinstance(owner, str):
        return
    name = getattr(method, "__name__", "")
    if name in _WIDTH_METHODS and args:
        _width(f"str.{name}()", args[0])
    elif name == "expandtabs":
        size = args[0] if args else kwargs.get("tabsize", 8)
        _width("str.expandtabs()", size, owner.count("\t"))
    elif name in ("format", "format_map"):
        check_format_string(owner, percent=False)
    elif name == "replace" and len(args) >= 2 and isinstance(args[1], str):
        times = owner.count(args[0]) if args[0] else len(owner) + 1
        size = len(owner) + times * len(args[1])
        if size > max_text():
            raise _too_long("str.replace()", size)
    elif name == "join" and args and isinstance(args[0], list | tuple):
        size = sum(len(x) for x in args[0] if isinstance(x, str)) + len(owner) * len(args[0])
        if size > max_text():
            raise _too_long("str.join()", size)


class _Metered(NodeTransformer):
    """Every `for` iterates through `environment.metered_iter`, every `~` through
    `environment.metered_concat`: both charge the budget before the work happens."""

    @staticmethod
    def _call(name: str, args: list[nodes.Expr], lineno: int) -> nodes.Call:
        attribute = nodes.EnvironmentAttribute(name, lineno=lineno)
        return nodes.Call(attribute, args, [], None, None, lineno=lineno)

    def visit_For(self, node: nodes.For) -> nodes.For:
        self.generic_visit(node)
        node.iter = self._call("metered_iter", [node.iter], node.lineno)
        return node

    def visit_Concat(self, node: nodes.Concat) -> nodes.Call:
        self.generic_visit(node)
        return self._call("metered_concat", list(node.nodes), node.lineno)


class BudgetedSandbox(SandboxedEnvironment):
    intercepted_binops = frozenset(_BINOPS)

    def __init__(self, **options: Any) -> None:
        super().__init__(**options)
        self.filters.update(
            center=_center,
            indent=_indent,
            slice=_slice,
            format=_format,
            replace=pass_eval_context(_replace),
        )

    def _parse(self, source: str, name: str | None, filename: str | None) -> nodes.Template:
        return _Metered().visit(super()._parse(source, name, filename))

    def call_binop(self, context: Any, operator: str, left: Any, right: Any) -> Any:
        _step()
        return guarded_binop(operator, left, right)

    def call(__self, __context: Any, __obj: Any, *args: Any, **kwargs: Any) -> Any:
        _step()
        _check_str_method(__obj, args, kwargs)
        return super().call(__context, __obj, *args, **kwargs)

    @staticmethod
    def metered_iter(iterable: Iterable) -> Iterator:
        for item in iterable:
            _step()
            yield item

    @staticmethod
    def metered_concat(*parts: Any) -> str:
        texts = [str(part) for part in parts]
        size = sum(map(len, texts))
        if size > max_text():
            raise _too_long("a concatenation", size)
        return "".join(texts)


def constant_cost(template: nodes.Template) -> None:
    """Refuse, while checking, a constant expression the renderer would refuse anyway
    (`{{ 9**(9**8) }}`): a save should not store a version that can never render."""

    known: dict[int, Any] = {}
    unknown = object()

    def value(node: nodes.Node) -> Any:
        if id(node) not in known:
            known[id(node)] = unknown  # until proven constant
            if isinstance(node, nodes.Const):
                known[id(node)] = node.value
            elif isinstance(node, nodes.BinExpr) and node.operator in _BINOPS:
                left, right = value(node.left), value(node.right)
                if left is not unknown and right is not unknown:
                    known[id(node)] = guarded_binop(node.operator, left, right)
            elif isinstance(node, nodes.Neg):
                inner = value(node.node)
                if inner is not unknown:
                    known[id(node)] = -inner
        return known[id(node)]

    for expr in template.find_all(nodes.BinExpr):
        try:
            value(expr)
        except (TypeError, ValueError, ArithmeticError, RecursionError):
            continue  # the renderer reports it with the values at hand


env = BudgetedSandbox(undefined=StrictUndefined, autoescape=False, keep_trailing_newline=True)
