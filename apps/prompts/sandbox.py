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
  `format` widths, `indent`, `slice`, `join`, `wordwrap`…) refuse outputs past
  `STUDIO_TEMPLATE_MAX_TEXT`, estimated before the work where possible;
- every filter and test call costs one step too, and whatever a filter, test or method call
  returns is measured (str, bytes and containers alike) against `STUDIO_TEMPLATE_MAX_TEXT`
  and costs a step per `RESULT_CHARS_PER_STEP` characters or items;
  what a value prints as is estimated before `str()` builds it (output, `~`, `%`, `format`);
- `sum` adds numbers only (summing lists copies them quadratically), `lipsum` is gone, and
  lists and dicts cannot be mutated (Jinja's ImmutableSandboxedEnvironment).

Everything that parses, compiles or renders a prompt template goes through `budget()`
(`apps/prompts/contracts.py`), so check, save, render, generation, batches, evals and
fine-tuning share one limit.
"""

import functools
import numbers
import operator
import re
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, MappingView
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any

from django.conf import settings
from jinja2 import StrictUndefined, nodes, pass_environment, pass_eval_context
from jinja2 import filters as jinja_filters
from jinja2.sandbox import ImmutableSandboxedEnvironment
from jinja2.utils import Namespace, _PassArg
from jinja2.visitor import NodeTransformer


class TemplateTooExpensive(Exception):
    """A template went past its budget; the message says which limit."""


@dataclass
class Budget:
    deadline: float
    budget_ms: int
    max_steps: int
    steps: int = 0

    def step(self, cost: int = 1) -> None:
        self.steps += cost
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


def _step(cost: int = 1) -> None:
    current = _current.get()
    if current is None:
        raise RuntimeError("a prompt template ran outside apps.prompts.sandbox.budget()")
    current.step(cost)


# A filter, test or call result costs a step per this many characters (or items): a map()
# of `upper` over a list repeating one long text must not build one copy per item for free.
RESULT_CHARS_PER_STEP = 100


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


_SIZED = (str, bytes, bytearray, list, tuple)


def text_size(value: Any, limit: int | None = None) -> int:
    """About len(str(value)), without building it: containers are walked (a list holding
    the same million-character string a hundred times prints as 100 million characters),
    stopping as soon as the size passes `limit`."""
    limit = max_text() if limit is None else limit
    if isinstance(value, str):
        return len(value)
    if isinstance(value, bytes | bytearray):
        return len(value) + 3
    if _is_int(value):
        return value.bit_length() // 3 + 2
    if value is None or isinstance(value, bool | float):
        return 5
    if isinstance(value, Namespace):
        value = value._Namespace__attrs  # type: ignore[attr-defined]
    if isinstance(value, Mapping | MappingView | list | tuple | set | frozenset):
        items = value.items() if isinstance(value, Mapping) else value
        total = 2
        for item in items:
            total += text_size(item, limit - total) + 2
            if total > limit:
                break
        return total
    return len(str(value))


def check_text(what: str, value: Any, extra: int = 0) -> None:
    """Refuse a value that would print as more than the text limit, before printing it."""
    size = text_size(value) + extra
    if size > max_text():
        raise _too_long(what, size)


def check_result(what: str, value: Any) -> Any:
    """Refuse what a filter, test or call returned when it is larger than the text limit;
    charge the budget for its size."""
    if isinstance(value, (*_SIZED, dict, set, frozenset)):
        if len(value) > max_text():
            raise _too_long(what, len(value))
        if len(value) >= RESULT_CHARS_PER_STEP:
            _step(len(value) // RESULT_CHARS_PER_STEP)
    return value


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
    elif op == "%" and isinstance(left, str | bytes | bytearray):
        fmt = left if isinstance(left, str) else left.decode("latin-1")
        check_format_string(fmt, percent=True)
        check_text("a %-formatted value", right, len(left))
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
    check_text("a format() result", [args, kwargs], len(str(value)))
    return jinja_filters.do_format(value, *args, **kwargs)


def _joined_size(separator: Any, items: list) -> int:
    size = len(separator) * max(len(items) - 1, 0)
    for item in items:
        size += text_size(item, max_text() - size)
        if size > max_text():
            break
    return size


@pass_eval_context
def _join(eval_ctx: Any, value: Iterable, d: str = "", attribute: str | int | None = None) -> str:
    if attribute is not None:
        value = map(jinja_filters.make_attrgetter(eval_ctx.environment, attribute), value)
    items = list(value)
    size = _joined_size(str(d), items)
    if size > max_text():
        raise _too_long("a join() result", size)
    return jinja_filters.do_join(eval_ctx, items, d)


@pass_environment
def _sum(
    environment: Any, iterable: Iterable, attribute: str | int | None = None, start: Any = 0
) -> Any:
    if attribute is not None:
        iterable = map(jinja_filters.make_attrgetter(environment, attribute), iterable)
    total = start
    for item in iterable:
        if not isinstance(total, numbers.Number) or not isinstance(item, numbers.Number):
            raise TemplateTooExpensive(
                "sum() adds numbers only in templates (adding up lists or strings copies "
                "them over and over)"
            )
        total = total + item
    return total


@pass_environment
def _wordwrap(
    environment: Any,
    s: str,
    width: int = 79,
    break_long_words: bool = True,
    wrapstring: str | None = None,
    break_on_hyphens: bool = True,
) -> str:
    text = str(s)
    # textwrap copies the rest of a long word for every line it breaks off: quadratic.
    if len(text) > max_text() // 10:
        raise TemplateTooExpensive(
            f"wordwrap() of {len(text)} characters; the limit is {max_text() // 10} "
            "(a tenth of STUDIO_TEMPLATE_MAX_TEXT)"
        )
    lines = len(text) // max(width, 1) + text.count("\n") + 1 if _is_int(width) else 1
    separator = environment.newline_sequence if wrapstring is None else str(wrapstring)
    size = len(text) + lines * len(separator)
    if size > max_text():
        raise _too_long("a wordwrap() result", size)
    for _ in range(lines):
        _step()
    return jinja_filters.do_wordwrap(
        environment, s, width, break_long_words, wrapstring, break_on_hyphens
    )


def _batch(value: Iterable, linecount: int, fill_with: Any = None) -> Iterator[list]:
    if _is_int(linecount) and linecount > max_text():
        raise _too_long("a batch", linecount)
    return jinja_filters.do_batch(value, linecount, fill_with)


_WIDTH_METHODS = {"center", "ljust", "rjust", "zfill"}


def _check_str_method(method: Any, args: tuple, kwargs: dict) -> tuple:
    """Refuse a str or bytes method call whose result would be too large; returns the
    arguments to call it with (an iterable handed to join() is read once, here)."""
    # The sandbox hands out str.format wrapped (functools.update_wrapper keeps __wrapped__).
    method = getattr(method, "__wrapped__", method)
    owner = getattr(method, "__self__", None)
    if not isinstance(owner, str | bytes | bytearray):
        return args
    name = getattr(method, "__name__", "")
    if name in _WIDTH_METHODS and args:
        _width(f"str.{name}()", args[0])
    elif name == "expandtabs":
        size = args[0] if args else kwargs.get("tabsize", 8)
        _width("str.expandtabs()", size, owner.count("\t"))
    elif name in ("format", "format_map") and isinstance(owner, str):
        check_format_string(owner, percent=False)
        check_text(f"str.{name}()", [args, kwargs], len(owner))
    elif name == "replace" and len(args) >= 2 and isinstance(args[1], str | bytes | bytearray):
        times = owner.count(args[0]) if args[0] else len(owner) + 1
        size = len(owner) + times * len(args[1])
        if size > max_text():
            raise _too_long("str.replace()", size)
    elif name == "translate" and args and isinstance(args[0], Mapping):
        longest = max((len(v) for v in args[0].values() if isinstance(v, str)), default=1)
        if len(owner) * longest > max_text():
            raise _too_long("str.translate()", len(owner) * longest)
    elif name == "join" and args:
        items = list(args[0])
        size = _joined_size(owner, items)
        if size > max_text():
            raise _too_long("str.join()", size)
        return (items, *args[1:])
    return args


# Filters that print their value (str(), repr, JSON, escaping) before working on it.
_PRINTING_FILTERS = {
    "capitalize", "e", "escape", "forceescape", "indent", "lower", "pprint", "replace",
    "safe", "string", "striptags", "title", "tojson", "trim", "truncate", "upper",
    "urlencode", "urlize", "wordcount", "wordwrap", "center",
}  # fmt: skip


def _metered(kind: str, name: str, func: Callable) -> Callable:
    """`func` (a filter or test) charging one step per call, refusing a value that would
    print too large before a printing filter builds it, and measuring what it returns."""
    value_at = 0 if _PassArg.from_obj(func) is None else 1
    printing = kind == "filter" and name in _PRINTING_FILTERS

    @functools.wraps(func)
    def metered(*args: Any, **kwargs: Any) -> Any:
        _step()
        if printing and len(args) > value_at:
            check_text(f"the value given to {name}", args[value_at])
        return check_result(f"the {kind} {name}", func(*args, **kwargs))

    return metered


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


def _finalize(value: Any) -> Any:
    """Every `{{ value }}` on its way out: refused before str() prints it too large."""
    check_text("a printed value", value)
    return value


class BudgetedSandbox(ImmutableSandboxedEnvironment):
    """Immutable: `list.extend`, `dict.update` and the like are refused (a loop of
    `l.extend(l)` doubles a list every step without building anything the budget sees)."""

    intercepted_binops = frozenset(_BINOPS)

    def __init__(self, **options: Any) -> None:
        super().__init__(finalize=_finalize, **options)
        self.filters.update(
            center=_center,
            indent=_indent,
            slice=_slice,
            format=_format,
            replace=pass_eval_context(_replace),
            join=_join,
            sum=_sum,
            wordwrap=_wordwrap,
            batch=_batch,
        )
        # The compiled template calls these directly (not through call_filter/call_test),
        # and so do constant folding and map()/select(): wrap the functions themselves.
        for name, func in list(self.filters.items()):
            self.filters[name] = _metered("filter", name, func)
        for name, func in list(self.tests.items()):
            self.tests[name] = _metered("test", name, func)
        # lipsum(2000, False, 200, 201) takes a third of a second in one call.
        self.globals.pop("lipsum", None)

    def _parse(self, source: str, name: str | None, filename: str | None) -> nodes.Template:
        return _Metered().visit(super()._parse(source, name, filename))

    def call_binop(self, context: Any, operator: str, left: Any, right: Any) -> Any:
        _step()
        return guarded_binop(operator, left, right)

    def call(__self, __context: Any, __obj: Any, *args: Any, **kwargs: Any) -> Any:
        _step()
        args = _check_str_method(__obj, args, kwargs)
        return check_result("a call", super().call(__context, __obj, *args, **kwargs))

    @staticmethod
    def metered_iter(iterable: Iterable) -> Iterator:
        for item in iterable:
            _step()
            yield item

    @staticmethod
    def metered_concat(*parts: Any) -> str:
        size = _joined_size("", list(parts))
        if size > max_text():
            raise _too_long("a concatenation", size)
        return "".join(str(part) for part in parts)


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
