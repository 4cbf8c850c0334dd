from django.urls import path

from apps.basemodels import views

app_name = "basemodels"

urlpatterns = [
    path("", views.base_model_list, name="list"),
]
