from django.urls import path

from apps.feedback.views import (
    alert_acknowledge,
    alert_rule,
    alerts,
    dashboard,
    generation_feedback,
)

app_name = "feedback"
# Mounted at squads/<slug:squad>/ (every view takes `squad`).
urlpatterns = [
    path("prompts/<slug:slug>/dashboard", dashboard, name="dashboard"),
    path(
        "generations/<int:generation_id>/feedback",
        generation_feedback,
        name="generation_feedback",
    ),
    path("alerts/", alerts, name="alerts"),
    path("alerts/rule", alert_rule, name="alert_rule"),
    path("alerts/<int:alert_id>/acknowledge", alert_acknowledge, name="alert_acknowledge"),
]
