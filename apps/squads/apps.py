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

        post_migrate.connect(_sync, dispatch_uid="squads_roles_sync", weak=False)

        from django.contrib.auth import get_user_model
        from django.db.models.signals import post_save

        from apps.squads.services import user_changed

        def _user_saved(sender: type, instance: object, created: bool, **kwargs: object) -> None:
            # Deactivation or a staff change must reach cached token entries at once.
            if not created:
                user_changed(user=instance)

        post_save.connect(
            _user_saved, sender=get_user_model(), dispatch_uid="squads_user_saved", weak=False
        )

        from axes.signals import user_locked_out

        from apps.squads.signin import signin_locked_out_audit

        def _locked_out(sender: object, request: object = None, **kwargs: object) -> None:
            if request is not None:
                signin_locked_out_audit(request=request, username=kwargs.get("username"))

        user_locked_out.connect(_locked_out, dispatch_uid="squads_signin_locked", weak=False)
