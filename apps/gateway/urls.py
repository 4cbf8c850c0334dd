from django.urls import path

from apps.gateway import v1

urlpatterns = [
    path("models", v1.models, name="models"),
    path("chat/completions", v1.chat_completions, name="chat_completions"),
]
