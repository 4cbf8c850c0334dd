from django.apps import AppConfig


class FinetuneConfig(AppConfig):
    name = "apps.finetune"
    label = "finetune"
    verbose_name = "Fine-tuning"

    def ready(self) -> None:
        # registers the fine-tune and adapter comparison job kinds
        from apps.finetune import comparisons, jobs  # noqa: F401
