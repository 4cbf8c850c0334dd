"""The OpenAI-compatible endpoints under /v1/: plain Django views (no session, no CSRF:
a service key in `Authorization: Bearer sk-studio-…` is the only credential).

Each view parses, calls the gateway's services (`completions`), and answers in OpenAI's
shapes; every refusal is a `GatewayError` in OpenAI's error shape.
"""

import logging
from collections.abc import Callable
from functools import wraps
from typing import Any

from django.conf import settings
from django.core.exceptions import RequestDataTooBig
from django.db import OperationalError
from django.db.models import Q
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.views.decorators.csrf import csrf_exempt

from apps.core.exceptions import ApplicationError, AuthenticationFailed, ValidationFailed
from apps.core.validation import parse_json
from apps.gateway import completions, protocol, quotas
from apps.gateway.protocol import GatewayError
from apps.gateway.services import KeyGrant, service_key_authenticate
from apps.generation.models import Generation, ModelTarget
from apps.prompts.models import Label

MAX_BODY = 4 * 1024 * 1024
logger = logging.getLogger(__name__)


def error_response(exc: GatewayError) -> JsonResponse:
    response = JsonResponse(exc.body(), status=exc.status)
    for name, value in exc.headers.items():
        response[name] = value
    return response


def authenticate(request: HttpRequest) -> KeyGrant:
    scheme, _, raw = request.headers.get("Authorization", "").partition(" ")
    raw = raw.strip()
    if scheme.lower() != "bearer" or not raw:
        raise GatewayError(
            "You didn't provide an API key: send 'Authorization: Bearer <service key>'.",
            status=401,
            code="invalid_api_key",
        )
    try:
        grant = service_key_authenticate(raw=raw)
    except AuthenticationFailed as exc:
        raise GatewayError(exc.message, status=401, code="invalid_api_key") from None
    if not grant.allow_gateway:
        raise GatewayError(
            "This service key has no gateway scope (it may only fetch prompts).",
            status=403,
            kind="permission_denied",
            code="scope_missing",
        )
    return grant


def openai_view(
    methods: tuple[str, ...],
) -> Callable[[Callable[..., HttpResponse]], Callable[..., HttpResponse]]:
    def wrap(view: Callable[..., HttpResponse]) -> Callable[..., HttpResponse]:
        @csrf_exempt
        @wraps(view)
        def inner(request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponse:
            try:
                if request.method not in methods:
                    raise GatewayError(
                        f"{request.method} is not allowed here; use {' or '.join(methods)}.",
                        status=405,
                        code="method_not_allowed",
                    )
                grant = authenticate(request)
                return view(request, grant, *args, **kwargs)
            except GatewayError as exc:
                return error_response(exc)
            except ApplicationError as exc:  # a rule of a shared service, e.g. a bad schema
                return error_response(
                    GatewayError(
                        exc.message,
                        status=400 if exc.status_code == 422 else exc.status_code,
                        param=exc.field,
                    )
                )
            except OperationalError as exc:  # the database is down or its pool is exhausted
                logger.warning("gateway call refused, database unavailable: %s", exc)
                return error_response(
                    GatewayError(
                        "Studio's database is busy or unavailable; try again shortly.",
                        status=503,
                        kind="server_error",
                        code="service_unavailable",
                        headers={"Retry-After": "2"},
                    )
                )

        return inner

    return wrap


@openai_view(("GET",))
def models(request: HttpRequest, grant: KeyGrant) -> HttpResponse:
    """What this key may call: the squad's targets (its own, then global ones it does not
    shadow) and its prompts by label, within the key's scope."""
    targets: dict[str, ModelTarget] = {}
    rows = ModelTarget.objects.filter(
        Q(squad_id=grant.squad_id) | Q(squad__isnull=True), enabled=True
    ).order_by("squad_id")
    for target in rows:
        if target.squad_id == grant.squad_id or target.name not in targets:
            targets[target.name] = target
    data = [
        protocol.model_entry(name, int(t.created_at.timestamp()), "studio")
        for name, t in sorted(targets.items())
        if grant.may_use_target(name)
    ]
    labels = (
        Label.objects.filter(template__squad_id=grant.squad_id)
        .select_related("template")
        .order_by("template__slug", "name")
    )
    data += [
        protocol.model_entry(
            f"prompt/{label.template.slug}@{label.name}",
            int(label.template.created_at.timestamp()),
            "studio",
        )
        for label in labels
        if grant.may_use_prompt(label.template.slug)
    ]
    return JsonResponse({"object": "list", "data": data})


def _body(request: HttpRequest) -> Any:
    try:
        body = request.body  # Django refuses past DATA_UPLOAD_MAX_MEMORY_SIZE (2.5 MiB)
    except RequestDataTooBig:
        body = None
    if body is None or len(body) > MAX_BODY:
        limit = min(MAX_BODY, settings.DATA_UPLOAD_MAX_MEMORY_SIZE or MAX_BODY)
        raise GatewayError(f"The body is over {limit} bytes.", status=413, code="request_too_large")
    try:
        return parse_json(body, field="body")
    except ValidationFailed as exc:
        raise protocol.bad(
            f"We could not parse the JSON body of your request: {exc.message}", None, "invalid_json"
        ) from None


@openai_view(("POST",))
def chat_completions(request: HttpRequest, grant: KeyGrant) -> HttpResponse:
    req = protocol.parse_chat_request(_body(request))
    call = completions.prepare_call(grant=grant, req=req, request=request)
    completions.reserve(call, streaming=req.stream)
    try:
        return _answer(request, call, req)
    except BaseException:
        # Whatever stopped the call (a database error, a bug): its reservation goes back
        # unless the call already settled it (settle and release happen once).
        if call.reservation is not None:
            quotas.release(call.reservation)
        raise


def _answer(
    request: HttpRequest, call: completions.Call, req: protocol.ChatRequest
) -> HttpResponse:
    if call.prepared.blocked:
        completions.record_blocked(call)
        raise completions.blocked_error(call)
    if req.stream:
        from apps.gateway.streaming import stream_response

        return stream_response(call, request)
    slot = completions.cache_slot(call, request)
    cached = completions.cache_hit(call, slot) if slot is not None else None
    generation = cached or completions.complete(call)
    if slot is not None and cached is None:
        completions.cache_store(slot, generation)
    error = completions.outcome_error(generation)
    headers = {**call.reservation.headers, **completions.generation_headers(generation)}
    if slot is not None:
        headers["X-Studio-Cache"] = "hit" if cached else ("bypass" if slot.bypass else "miss")
    if error is not None:
        error.headers = {**headers, **error.headers}
        raise error
    body = protocol.completion(
        id=f"chatcmpl-{generation.pk}",
        model=req.model_name,
        content="" if generation.status == Generation.Status.BLOCKED else generation.output_text,
        finish_reason=completions.finish_reason(generation),
        prompt_tokens=generation.input_tokens,
        completion_tokens=generation.output_tokens,
    )
    response = JsonResponse(body)
    for name, value in headers.items():
        response[name] = value
    return response
