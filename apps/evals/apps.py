from django.apps import AppConfig


class EvalsConfig(AppConfig):
    name = "apps.evals"
    label = "evals"
    verbose_name = "Evaluation"

    def ready(self) -> None:
        from apps.evals import services  # noqa: F401  (registers the eval run job kind)
