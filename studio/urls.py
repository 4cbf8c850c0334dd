from django.contrib import admin
from django.contrib.auth import views as auth_views
from django.http import HttpRequest, HttpResponseRedirect, JsonResponse
from django.templatetags.static import static
from django.urls import include, path, re_path
from django.views.decorators.csrf import csrf_exempt
from django.views.generic import RedirectView

from apps.prompts import fast as prompts_fast
from apps.squads import fast as squads_fast
from apps.telemetry.views import metrics_view
from studio.api import api


def healthz(request: HttpRequest) -> JsonResponse:
    """Liveness probe; also the bare baseline of bench/api_overhead.py."""
    return JsonResponse({"status": "ok"})


def favicon(request: HttpRequest) -> HttpResponseRedirect:
    """Browsers ask for /favicon.ico where a page names no icon (the admin, a raw file).
    The address is looked up per request: production's hashed names exist only once
    collectstatic has run, which is after this module is imported."""
    return HttpResponseRedirect(static("favicon.svg"))


@csrf_exempt
def api_not_found(request: HttpRequest) -> JsonResponse:
    """Any /api/ address no operation serves: JSON like every other API answer, and no
    CSRF check first (a bearer token never needs one, on any path)."""
    return JsonResponse(
        {"detail": f"No API operation answers {request.method} {request.path}."}, status=404
    )


@csrf_exempt
def api_home(request: HttpRequest) -> HttpResponseRedirect | JsonResponse:
    """/api/v1/ itself: the docs page for a browser, a JSON 404 for any other method
    (ninja's own root view is not CSRF-exempt, so a token's PUT met Django's HTML 403)."""
    if request.method in ("GET", "HEAD"):
        return HttpResponseRedirect("/api/v1/docs")
    return api_not_found(request)


urlpatterns = [
    path("healthz", healthz, name="healthz"),
    path("favicon.ico", favicon),
    path("metrics", metrics_view, name="metrics"),
    path("admin/", admin.site.urls),
    # Hot reads served without ninja's per-request overhead (apps/core/plainapi.py): the
    # runtime fetch and the squad detail; other methods on these paths go to ninja.
    path("api/v1/squads/<slug:squad>/prompts/<slug:slug>", prompts_fast.prompt_fetch),
    path("api/v1/squads/<slug:slug>", squads_fast.squad_detail),
    path("api/v1/", api_home),
    path("api/v1/", api.urls),
    # The OpenAI-compatible gateway (apps/gateway/v1.py): service keys only.
    path("v1/", include(("apps.gateway.urls", "gateway_v1"))),
    path("api/docs", RedirectView.as_view(url="/api/v1/docs", permanent=False)),
    re_path(r"^api/", api_not_found),
    path(
        "login/",
        auth_views.LoginView.as_view(redirect_authenticated_user=True),
        name="login",
    ),
    path("logout/", auth_views.LogoutView.as_view(), name="logout"),
    path("audit/", include("apps.audit.urls")),
    path("base-models/", include("apps.basemodels.urls")),
    path(
        "squads/<slug:squad>/prompts/<slug:slug>/versions/<int:number>/evidence",
        include("apps.evidence.urls"),
    ),
    path("squads/<slug:squad>/prompts/", include("apps.prompts.urls")),
    path("squads/<slug:squad>/datasets/", include("apps.finetune.urls")),
    path("squads/<slug:squad>/finetune/", include("apps.finetune.job_urls")),
    path("squads/<slug:squad>/governance/", include("apps.governance.urls")),
    path("squads/<slug:squad>/evals/", include("apps.evals.urls")),
    path("squads/<slug:squad>/webhooks/", include("apps.webhooks.urls")),
    path("squads/<slug:squad>/gateway/", include("apps.gateway.page_urls")),
    path("squads/<slug:squad>/", include("apps.generation.urls")),
    path("squads/<slug:squad>/", include("apps.feedback.urls")),
    path("", include("apps.reviews.urls")),
    path("", include("apps.squads.urls")),
]
