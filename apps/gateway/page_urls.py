from django.urls import path

from apps.gateway import views

app_name = "gateway"

urlpatterns = [
    path("", views.gateway_page, name="page"),
    path("keys", views.key_create, name="key_create"),
    path("keys/<int:key_id>/revoke", views.key_revoke, name="key_revoke"),
    path("keys/<int:key_id>/rotate", views.key_rotate, name="key_rotate"),
    path("quota", views.quota_set, name="quota"),
    path("cache", views.cache_rule_set, name="cache"),
]
