from django.urls import path

from apps.governance import views

app_name = "governance"

urlpatterns = [
    path("", views.policy, name="policy"),
    path("test", views.test_bench, name="test_bench"),
]
