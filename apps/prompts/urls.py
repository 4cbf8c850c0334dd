from django.urls import path

from apps.prompts import views

app_name = "prompts"

# Mounted at squads/<slug:squad>/prompts/ (every view takes `squad`).
urlpatterns = [
    path("", views.prompt_list, name="list"),
    path("new", views.prompt_new, name="new"),
    path("preview", views.preview, name="preview"),
    path("message-row", views.message_row, name="message_row"),
    path("<slug:slug>/", views.prompt_detail, name="detail"),
    path("<slug:slug>/edit", views.prompt_edit, name="edit"),
    path("<slug:slug>/versions/<int:number>", views.version_detail, name="version"),
    path(
        "<slug:slug>/versions/<int:number>/sample.<str:fmt>",
        views.version_sample,
        name="version_sample",
    ),
    path("<slug:slug>/diff", views.diff, name="diff"),
    path("<slug:slug>/labels/", views.label_move, name="label_new"),
    path("<slug:slug>/labels/<slug:name>", views.label_move, name="label_move"),
]
