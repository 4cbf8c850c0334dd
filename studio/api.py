"""The REST API (django-ninja), mounted at /api/v1/.

Authentication: `Authorization: Bearer <token>` (personal API tokens), or the
browser session, which must carry the CSRF token on unsafe methods. Errors are
JSON: `{"detail": "...", "field": "..."}`; 401 says why authentication failed.
"""

import json
from typing import Any

from django.http import Http404, HttpRequest, HttpResponse
from ninja import NinjaAPI
from ninja.errors import AuthenticationError, HttpError, ValidationError
from ninja.parser import Parser
from ninja.security import HttpBearer
from ninja.types import DictStrAny
from ninja.utils import check_csrf

from apps.audit.api import router as audit_router
from apps.basemodels.api import router as basemodels_router
from apps.core.api import router as jobs_router
from apps.core.exceptions import ApplicationError, AuthenticationFailed, PermissionDenied
from apps.core.http import bound_api_integers
from apps.core.openapi import document_errors
from apps.core.waits import WaitRefused
from apps.evals.api import router as evals_router
from apps.evidence.api import router as evidence_router
from apps.feedback.api import router as feedback_router
from apps.finetune.api import router as finetune_router
from apps.gateway.api import router as gateway_router
from apps.generation.api import router as generation_router
from apps.governance.api import router as governance_router
from apps.prompts.api import router as prompts_router
from apps.reviews.api.approvals import router as reviews_approvals_router
from apps.reviews.api.queues import router as review_queues_router
from apps.squads.api import router as squads_router
from apps.squads.api import tokens_router
from apps.squads.services import api_token_authenticate
from apps.telemetry.middleware import bind_user
from apps.webhooks.api import router as webhooks_router
from studio.api_docs import docs_access

SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS", "TRACE"})


class BearerOrSession(HttpBearer):
    """A bearer token when the header is present, otherwise the signed-in session."""

    def __call__(self, request: HttpRequest) -> object:
        header = request.headers.get("Authorization")
        if header is not None:
            scheme, _, raw = header.partition(" ")
            if scheme.lower() != "bearer" or not raw.strip():
                raise AuthenticationFailed(
                    "Malformed Authorization header; expected 'Bearer <token>'."
                )
            return self.authenticate(request, raw.strip())
        user = getattr(request, "user", None)
        if user is not None and user.is_authenticated:
            if request.method not in SAFE_METHODS and check_csrf(request) is not None:
                raise PermissionDenied(
                    "CSRF verification failed: send the X-CSRFToken header with session "
                    "requests, or use a bearer token."
                )
            return user
        raise AuthenticationFailed(
            "Authentication required: send 'Authorization: Bearer <token>' or sign in."
        )

    def authenticate(self, request: HttpRequest, token: str) -> object:
        user = api_token_authenticate(raw=token)
        request.user = user
        bind_user(user)
        return user


def _no_constant(name: str) -> object:
    raise ValueError(f"{name} is not JSON (numbers must be finite)")


class StrictJSONParser(Parser):
    """JSON as RFC 8259 has it: Python's parser also takes NaN and Infinity, which
    PostgreSQL's jsonb refuses at save time (a 500 instead of a 422 saying where)."""

    def parse_body(self, request: HttpRequest) -> DictStrAny:
        return json.loads(request.body, parse_constant=_no_constant)


class StudioAPI(NinjaAPI):
    def get_openapi_schema(self, **kwargs: Any) -> Any:
        return document_errors(super().get_openapi_schema(**kwargs))


api = StudioAPI(
    parser=StrictJSONParser(),
    title="Studio API",
    version="1",
    description=__doc__ or "",
    auth=BearerOrSession(),
    urls_namespace="api",
    docs_decorator=docs_access,
)


@api.exception_handler(ApplicationError)
def application_error(request: HttpRequest, exc: ApplicationError) -> HttpResponse:
    response = api.create_response(request, exc.as_dict(), status=exc.status_code)
    if isinstance(exc, AuthenticationFailed):
        response["WWW-Authenticate"] = 'Bearer realm="studio"'
    if isinstance(exc, WaitRefused):
        response["Retry-After"] = str(exc.retry_after)
    return response


@api.exception_handler(Http404)
def not_found(request: HttpRequest, exc: Http404) -> HttpResponse:
    return api.create_response(request, {"detail": str(exc) or "Not found."}, status=404)


@api.exception_handler(AuthenticationError)
def authentication_error(request: HttpRequest, exc: AuthenticationError) -> HttpResponse:
    return api.create_response(request, {"detail": "Authentication required."}, status=401)


@api.exception_handler(ValidationError)
def validation_error(request: HttpRequest, exc: ValidationError) -> HttpResponse:
    errors = [
        {
            "field": ".".join(str(p) for p in e.get("loc", ()) if p not in ("body", "payload")),
            "message": e.get("msg", "invalid"),
        }
        for e in exc.errors
    ]
    summary = "; ".join(f"{e['field'] or 'body'}: {e['message']}" for e in errors)
    return api.create_response(
        request, {"detail": f"Invalid request: {summary}", "errors": errors}, status=422
    )


@api.exception_handler(HttpError)
def http_error(request: HttpRequest, exc: HttpError) -> HttpResponse:
    detail = str(exc)
    if isinstance(exc.__cause__, ValueError):
        # ninja hides why the body did not parse; say where it broke.
        detail = f"Malformed JSON body: {exc.__cause__}"
    return api.create_response(request, {"detail": detail}, status=exc.status_code)


ROUTERS = [
    ("/", squads_router),
    ("/tokens", tokens_router),
    ("/audit", audit_router),
    ("/", prompts_router),
    ("/", generation_router),
    ("/", reviews_approvals_router),
    ("/", review_queues_router),
    ("/", finetune_router),
    ("/", governance_router),
    ("/", evals_router),
    ("/", evidence_router),
    ("/", webhooks_router),
    ("/", feedback_router),
    ("/", jobs_router),
    ("/", gateway_router),
    ("/", basemodels_router),
]
for prefix, router in ROUTERS:
    api.add_router(prefix, router)
# One bound for every integer any operation reads (apps/core/http.py): 9223372036854775808
# in a query string was a 500 ("bigint out of range"), now a 422 naming the parameter.
bound_api_integers(
    [
        operation
        for _, router in ROUTERS
        for view in router.path_operations.values()
        for operation in view.operations
    ]
)
