from django.urls import path

from apps.finetune import views

app_name = "finetune"

# Mounted at squads/<slug:squad>/datasets/ (every view takes `squad`).
urlpatterns = [
    path("", views.dataset_list, name="list"),
    path("from-review-export", views.version_from_review_export, name="from_review_export"),
    path("<slug:slug>/", views.dataset_detail, name="detail"),
    path("<slug:slug>/diff", views.version_diff, name="diff"),
    path("<slug:slug>/sample.jsonl", views.dataset_sample, name="sample"),
    path("<slug:slug>/v<int:number>/rows", views.version_rows, name="rows"),
    path("<slug:slug>/v<int:number>.jsonl", views.version_download, name="download"),
]
