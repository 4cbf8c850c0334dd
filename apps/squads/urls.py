from django.urls import path

from apps.squads import views

app_name = "squads"

urlpatterns = [
    path("", views.dashboard, name="dashboard"),
    path("account/tokens/", views.tokens, name="tokens"),
    path("account/tokens/<int:token_id>/revoke", views.token_revoke, name="token_revoke"),
    path("squads/<slug:slug>/", views.squad_detail, name="detail"),
    path("squads/<slug:slug>/settings", views.squad_settings, name="settings"),
    path("squads/<slug:slug>/members/", views.members, name="members"),
    path("squads/<slug:slug>/members/<str:username>", views.member_update, name="member_update"),
    path(
        "squads/<slug:slug>/members/<str:username>/remove",
        views.member_remove,
        name="member_remove",
    ),
]
