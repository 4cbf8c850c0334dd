from django.urls import path

from apps.evals import views

app_name = "evals"

# Mounted at squads/<slug:squad>/evals/ (every view takes `squad`).
urlpatterns = [
    path("", views.index, name="index"),
    path("prompts/<slug:slug>/", views.cases, name="cases"),
    path("prompts/<slug:slug>/cases/<int:case_id>/edit", views.case_edit, name="case_edit"),
    path("prompts/<slug:slug>/cases/<int:case_id>/delete", views.case_delete, name="case_delete"),
    path("prompts/<slug:slug>/cases/import", views.case_import, name="case_import"),
    path("prompts/<slug:slug>/cases/export.jsonl", views.case_export, name="case_export"),
    path("prompts/<slug:slug>/runs", views.run_start, name="run_start"),
    path("runs/<int:run_id>/", views.run_detail, name="run"),
    path("runs/<int:run_id>/cancel", views.run_cancel, name="run_cancel"),
    path("compare", views.compare, name="compare"),
]
