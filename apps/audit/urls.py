from django.urls import path

from apps.audit import views

app_name = "audit"

urlpatterns = [
    path("<slug:slug>/", views.squad_audit, name="squad"),
]
