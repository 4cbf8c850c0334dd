import threading

import pytest
from django.contrib.auth.models import Group
from django.db import connection

from apps.audit.models import AuditEvent
from apps.core.exceptions import Conflict, NotFound, PermissionDenied, ValidationFailed
from apps.squads import selectors, services
from apps.squads.access import has_squad_permission
from apps.squads.models import Membership
from apps.squads.permissions import MANAGE_MEMBERS, VIEW_AUDIT, VIEW_SQUAD, role_group_name
from tests.factories import UserFactory, make_squad

pytestmark = pytest.mark.django_db


def test_roles_are_guardian_object_permissions_on_the_squad(squad):
    sme = Membership.objects.get(squad=squad, user__username="sme").user
    assert sme.groups.filter(name=role_group_name(squad.pk, "sme")).exists()
    # guardian answers through Django's permission API as well as ours.
    assert sme.has_perm(VIEW_SQUAD.perm, squad)
    assert not sme.has_perm(MANAGE_MEMBERS.perm, squad)
    other = make_squad(slug="other")
    assert not sme.has_perm(VIEW_SQUAD.perm, other)


def test_multiple_roles_union_their_permissions(squad):
    owner = UserFactory(username="owner")
    multi = UserFactory(username="multi")
    services.membership_add(actor=owner, squad=squad, user=multi, roles=["viewer", "compliance"])
    assert has_squad_permission(multi, squad, VIEW_AUDIT)
    assert not has_squad_permission(multi, squad, MANAGE_MEMBERS)


def test_role_change_takes_effect_and_is_audited(squad):
    owner = UserFactory(username="owner")
    membership = Membership.objects.get(squad=squad, user__username="viewer")
    services.membership_set_roles(actor=owner, membership=membership, roles=["owner"])
    viewer = membership.user
    assert has_squad_permission(viewer, squad, MANAGE_MEMBERS)
    event = AuditEvent.objects.order_by("-sequence").first()
    assert event.action == "squad.member_roles_changed"
    assert event.data == {"username": "viewer", "before": ["viewer"], "after": ["owner"]}
    assert event.actor_label == "owner" and event.squad_id == squad.pk


def test_last_owner_cannot_leave_or_be_demoted(squad):
    owner = UserFactory(username="owner")
    mine = Membership.objects.get(squad=squad, user=owner)
    with pytest.raises(Conflict, match="last owner"):
        services.membership_remove(actor=owner, membership=mine)
    with pytest.raises(Conflict, match="last owner"):
        services.membership_set_roles(actor=owner, membership=mine, roles=["viewer"])
    # With a second owner, the first may step down.
    second = Membership.objects.get(squad=squad, user__username="sme")
    services.membership_set_roles(actor=owner, membership=second, roles=["sme", "owner"])
    services.membership_remove(actor=owner, membership=mine)
    assert not has_squad_permission(owner, squad, VIEW_SQUAD)
    assert not Group.objects.get(name=role_group_name(squad.pk, "owner")).user_set.filter(
        pk=owner.pk
    )


def test_nothing_is_half_stored_when_the_audit_write_fails(squad, monkeypatch):
    owner = UserFactory(username="owner")
    newcomer = UserFactory(username="newcomer")

    def broken(**kwargs):
        raise RuntimeError("audit store down")

    monkeypatch.setattr("apps.squads.services.audit_log", broken)
    with pytest.raises(RuntimeError):
        services.membership_add(actor=owner, squad=squad, user=newcomer, roles=["sme"])
    assert not Membership.objects.filter(user=newcomer).exists()
    assert not newcomer.groups.exists()


@pytest.mark.parametrize(
    ("kwargs", "error", "field"),
    [
        ({"name": "", "slug": "ok"}, ValidationFailed, "name"),
        ({"name": "x" * 101, "slug": "ok"}, ValidationFailed, "name"),
        ({"name": "Ok", "slug": "Not A Slug"}, ValidationFailed, "slug"),
        ({"name": "Ok", "slug": "-bad"}, ValidationFailed, "slug"),
        ({"name": "Ok", "slug": "s" * 51}, ValidationFailed, "slug"),
        ({"name": "Ok", "slug": "acme"}, Conflict, "slug"),
    ],
)
def test_squad_create_refuses_bad_input(squad, kwargs, error, field):
    before = AuditEvent.objects.count()
    with pytest.raises(error) as info:
        services.squad_create(actor=UserFactory(username="owner"), **kwargs)
    assert info.value.field == field
    assert AuditEvent.objects.count() == before


def test_membership_roles_are_validated(squad):
    owner = UserFactory(username="owner")
    with pytest.raises(ValidationFailed, match="Unknown role"):
        services.membership_add(
            actor=owner, squad=squad, user=UserFactory(username="x"), roles=["admin"]
        )
    with pytest.raises(ValidationFailed, match="at least one role"):
        services.membership_add(actor=owner, squad=squad, user=UserFactory(username="y"), roles=[])
    with pytest.raises(Conflict, match="already a member"):
        services.membership_add(
            actor=owner, squad=squad, user=UserFactory(username="sme"), roles=["sme"]
        )


def test_selectors_hide_missing_and_forbidden_alike(squad):
    outsider = UserFactory(username="outsider")
    with pytest.raises(NotFound) as missing:
        selectors.squad_get_for_user(user=outsider, slug="nope")
    with pytest.raises(NotFound) as hidden:
        selectors.squad_get_for_user(user=outsider, slug="acme")
    assert type(missing.value) is type(hidden.value)
    with pytest.raises(PermissionDenied):
        selectors.squad_get_for_user(
            user=UserFactory(username="viewer"), slug="acme", permission=MANAGE_MEMBERS
        )
    assert list(selectors.squad_list_for_user(user=outsider)) == []
    assert [s.slug for s in selectors.squad_list_for_user(user=UserFactory(username="sme"))] == [
        "acme"
    ]


def test_registry_sync_repairs_role_groups(squad):
    """A role group that lost a permission (or gained one) is put right by the sync
    that runs after every migrate."""
    from guardian.shortcuts import assign_perm, remove_perm

    group = Group.objects.get(name=role_group_name(squad.pk, "viewer"))
    remove_perm(VIEW_SQUAD.perm, group, squad)
    assign_perm(MANAGE_MEMBERS.perm, group, squad)
    services.squad_roles_sync_all()
    viewer = UserFactory(username="viewer")
    assert has_squad_permission(viewer, squad, VIEW_SQUAD)
    assert not has_squad_permission(viewer, squad, MANAGE_MEMBERS)


@pytest.mark.postgres
@pytest.mark.django_db(transaction=True)
def test_concurrent_demotions_keep_one_owner():
    """Two owners demote each other at once: the squad lock lets one win."""
    first, second = UserFactory(username="a-owner"), UserFactory(username="b-owner")
    squad = make_squad(owner=first, slug="race")
    services.membership_add(actor=first, squad=squad, user=second, roles=["owner"])
    memberships = {m.user.username: m for m in Membership.objects.filter(squad=squad)}
    errors: list[Exception] = []
    barrier = threading.Barrier(2)

    def demote(actor, target):
        barrier.wait()
        try:
            services.membership_set_roles(actor=actor, membership=target, roles=["viewer"])
        except Exception as exc:
            errors.append(exc)
        finally:
            connection.close()

    threads = [
        threading.Thread(target=demote, args=(first, memberships["b-owner"])),
        threading.Thread(target=demote, args=(second, memberships["a-owner"])),
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    owners = Group.objects.get(name=role_group_name(squad.pk, "owner")).user_set.count()
    assert owners == 1
    assert len(errors) == 1
