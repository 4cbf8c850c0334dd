from django.urls import path

from apps.webhooks import views

app_name = "webhooks"

urlpatterns = [
    path("", views.webhook_list, name="list"),
    path("<int:webhook_id>/", views.webhook_detail, name="detail"),
    path("<int:webhook_id>/log", views.delivery_log, name="log"),
    path("<int:webhook_id>/test", views.webhook_test_send, name="test"),
    path("<int:webhook_id>/secret", views.webhook_rotate, name="rotate"),
    path("<int:webhook_id>/delete", views.webhook_delete, name="delete"),
    path(
        "<int:webhook_id>/deliveries/<int:delivery_id>/redeliver",
        views.delivery_redeliver,
        name="redeliver",
    ),
]
