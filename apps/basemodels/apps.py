from django.apps import AppConfig


class BaseModelsConfig(AppConfig):
    name = "apps.basemodels"
    label = "basemodels"
    verbose_name = "Base models"
