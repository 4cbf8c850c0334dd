from django.apps import AppConfig


class GenerationConfig(AppConfig):
    name = "apps.generation"
    label = "generation"
    verbose_name = "Generation"

    def ready(self) -> None:
        from apps.generation import services  # noqa: F401  (registers the batch job kind)
