from django.apps import AppConfig


class FinetuneConfig(AppConfig):
    name = "apps.finetune"
    label = "finetune"
    verbose_name = "Fine-tuning"
