from django.urls import path

from apps.finetune import job_views

app_name = "finetune_jobs"

# Mounted at squads/<slug:squad>/finetune/ (every view takes `squad`).
urlpatterns = [
    path("", job_views.job_list, name="list"),
    path("preflight", job_views.job_preflight, name="preflight"),
    path("jobs/<int:job_id>/", job_views.job_detail, name="detail"),
    path("jobs/<int:job_id>/cancel", job_views.job_cancel, name="cancel"),
    path("adapters/<int:adapter_id>/", job_views.adapter_detail, name="adapter"),
    path("adapters/<int:adapter_id>/attach", job_views.adapter_attach, name="adapter_attach"),
    path(
        "adapters/<int:adapter_id>/comparisons",
        job_views.comparison_create,
        name="comparison_create",
    ),
    path(
        "adapters/<int:adapter_id>/comparisons/<int:comparison_id>/",
        job_views.comparison_detail,
        name="comparison",
    ),
    path(
        "adapters/<int:adapter_id>/download.<str:fmt>",
        job_views.adapter_download,
        name="adapter_download",
    ),
]
