from django.urls import path, re_path

from apps.generation import target_views, views

app_name = "generation"

# Mounted at squads/<slug:squad>/ (every view takes `squad`), after the prompts include.
urlpatterns = [
    path("prompts/<slug:slug>/run", views.playground, name="playground"),
    path("targets/", target_views.target_list, name="target_list"),
    path("targets/new", target_views.target_new, name="target_new"),
    path("targets/<slug:name>/edit", target_views.target_edit, name="target_edit"),
    path("generations/", views.generation_list, name="generation_list"),
    path("generations/<int:generation_id>", views.generation_detail, name="generation"),
    path("batches/", views.batch_list, name="batch_list"),
    path("batches/<int:job_id>/", views.batch_detail, name="batch_detail"),
    path("batches/<int:job_id>/cancel", views.batch_cancel, name="batch_cancel"),
    re_path(
        r"^batches/(?P<job_id>[0-9]+)/results\.(?P<fmt>jsonl|csv)$",
        views.batch_export,
        name="batch_export",
    ),
]
