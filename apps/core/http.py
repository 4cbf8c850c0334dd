import ipaddress
import types
from functools import lru_cache
from typing import Annotated, Any, Union, get_args, get_origin

import annotated_types
from django.conf import settings
from django.http import HttpRequest
from pydantic import BaseModel, Field

# Every integer Studio takes from a request lies within ±(2**53 - 1): exact in JSON and
# JavaScript, and a sum of two (offset + limit) still fits PostgreSQL's bigint.
MAX_INT = 2**53 - 1
BoundedInt = Annotated[int, Field(ge=-MAX_INT, le=MAX_INT)]


@lru_cache(maxsize=8)
def _proxies(entries: tuple[str, ...]) -> tuple:
    return tuple(ipaddress.ip_network(e.strip(), strict=False) for e in entries if e.strip())


def _trusted(raw: str, proxies: tuple) -> bool:
    try:
        address = ipaddress.ip_address(raw.strip())
    except ValueError:
        return False
    return any(address in network for network in proxies)


def client_ip(request: HttpRequest | None) -> str | None:
    """The caller's address: REMOTE_ADDR, or — when REMOTE_ADDR is one of
    STUDIO_TRUSTED_PROXIES — the right-most X-Forwarded-For entry that is not a trusted
    proxy (entries left of it are the client's own claims and can be forged).

    Per-address API budgets, sign-in lockouts and the audit log's `ip` use it.
    """
    if request is None:
        return None
    remote = request.META.get("REMOTE_ADDR") or None
    proxies = _proxies(tuple(getattr(settings, "STUDIO_TRUSTED_PROXIES", ())))
    if remote is None or not proxies or not _trusted(remote, proxies):
        return remote
    forwarded = [e.strip() for e in request.META.get("HTTP_X_FORWARDED_FOR", "").split(",")]
    for entry in reversed(forwarded):
        if not entry:
            continue
        if not _trusted(entry, proxies):
            try:
                return str(ipaddress.ip_address(entry))
            except ValueError:
                return remote  # garbage in the header: the proxy's address, not the claim
    return remote


def parse_id(raw: str | None) -> int | None:
    """A row id typed into a form or a query string, or None when it is not one. Decimal
    digits only (isdigit() also accepts "²", which int() refuses) and at most MAX_INT, so
    it fits PostgreSQL's bigint and int() never meets its 4,300-digit limit."""
    raw = (raw or "").strip()
    if not raw.isdecimal() or len(raw) > len(str(MAX_INT)):
        return None
    value = int(raw)
    return value if value <= MAX_INT else None


def _bounded(annotation: Any) -> Any:
    """`annotation` with every bare `int` inside it (list[int], dict[str, int] …) bounded."""
    if annotation is int:
        return BoundedInt
    origin = get_origin(annotation)
    if origin is None or origin is Annotated:
        return annotation
    args = get_args(annotation)
    bounded = tuple(_bounded(arg) for arg in args)
    if bounded == args:
        return annotation
    if origin in (Union, types.UnionType):
        return Union[bounded]  # noqa: UP007 (built from a tuple)
    return origin[bounded] if len(bounded) > 1 else origin[bounded[0]]


def _is_optional_int(annotation: Any) -> bool:
    if annotation is int:
        return True
    args = get_args(annotation)
    return get_origin(annotation) in (Union, types.UnionType) and set(args) == {int, type(None)}


def bound_model_integers(model: type[BaseModel], done: set[type] | None = None) -> None:
    """Give every integer field of `model` and of the models it nests the MAX_INT bounds
    (keeping tighter bounds a field declares), then rebuild the validators, children
    first. The OpenAPI document shows the bounds."""
    done = set() if done is None else done
    if model in done:
        return
    done.add(model)
    for info in model.model_fields.values():
        for nested in _models_in(info.annotation):
            bound_model_integers(nested, done)
        if _is_optional_int(info.annotation):
            kinds = {type(m) for m in info.metadata}
            if not kinds & {annotated_types.Ge, annotated_types.Gt}:
                info.metadata.append(annotated_types.Ge(-MAX_INT))
            if not kinds & {annotated_types.Le, annotated_types.Lt}:
                info.metadata.append(annotated_types.Le(MAX_INT))
        else:
            info.annotation = _bounded(info.annotation)
    model.model_rebuild(force=True)


def _models_in(annotation: Any) -> list[type[BaseModel]]:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    return [m for arg in get_args(annotation) for m in _models_in(arg)]


def bound_api_integers(operations: list[Any]) -> None:
    """Bound every integer a ninja operation reads from its path, query, form or body
    (`operation.models`). Called once, when the API is assembled (studio/api.py)."""
    done: set[type] = set()
    for operation in operations:
        for model in operation.models:
            bound_model_integers(model, done)
