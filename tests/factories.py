import factory
from django.contrib.auth import get_user_model

from apps.squads import services

PASSWORD = "correct-horse-battery"


class UserFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = get_user_model()
        django_get_or_create = ("username",)
        skip_postgeneration_save = True

    username = factory.Sequence(lambda n: f"user{n}")

    @factory.post_generation
    def password(self, create: bool, extracted: str | None, **kwargs: object) -> None:
        # get_or_create returns existing users too: keep their password (and sessions).
        if self.password and not extracted:
            return
        self.set_password(extracted or PASSWORD)
        if create:
            self.save(update_fields=["password"])


def make_squad(*, owner=None, slug: str = "acme", name: str = "Acme", members: dict | None = None):
    """A squad created through the services, with `members` = {username: [roles]}."""
    owner = owner or UserFactory(username=f"{slug}-owner")
    squad = services.squad_create(actor=owner, name=name, slug=slug)
    for username, roles in (members or {}).items():
        services.membership_add(
            actor=owner, squad=squad, user=UserFactory(username=username), roles=roles
        )
    return squad
