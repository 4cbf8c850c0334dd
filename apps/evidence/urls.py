from django.urls import path

from apps.evidence import views

app_name = "evidence"

# Mounted at squads/<slug:squad>/prompts/<slug:slug>/versions/<int:number>/evidence.
urlpatterns = [
    path("", views.evidence_page, name="page"),
    path(".zip", views.evidence_download, name="download"),
]
