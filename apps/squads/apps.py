from django.apps import AppConfig
from django.db.models.signals import post_migrate


class SquadsConfig(AppConfig):
    name = "apps.squads"
    label = "squads"
    verbose_name = "Squads and access"

    def ready(self) -> None:
        from apps.squads.services import squad_roles_sync_all

        def _sync(sender: AppConfig, **kwargs: object) -> None:
            # A later migration may add permissions to a role; bring every
            # squad's role groups up to date with the registry.
            if sender.label == self.label:
                squad_roles_sync_all(using=str(kwargs.get("using", "default")))

        post_migrate.connect(_sync, dispatch_uid="squads_roles_sync")
