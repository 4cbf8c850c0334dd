"""The protected-label gate, through every way a label moves: the service, the API (an
owner's bearer token), the prompt page's label view, the admin console and `move_label`.
Each is refused with what is missing, and allowed once the version is approved."""

import pytest
from django.contrib.messages import get_messages
from django.core.management import call_command
from django.core.management.base import CommandError
from django.test import Client

from apps.core.exceptions import Conflict
from apps.prompts import services as prompts
from apps.prompts.models import Label, LabelMove
from apps.reviews.models import ReviewRequest
from apps.reviews.services import approvals as services
from tests.factories import PASSWORD, UserFactory
from tests.reviews.factories import approve, engineer_prompt, new_version, open_review

pytestmark = pytest.mark.django_db
MISSING = "needs 1 compliance approval"


@pytest.fixture
def template(squad):
    return engineer_prompt(squad)


@pytest.fixture
def half_approved(template):
    """Version 1 under review with the SME's approval only."""
    review = open_review(template.latest_version)
    return services.review_decide(
        actor=UserFactory(username="sme"), review=review, verdict="approve"
    )


def _finish(review: ReviewRequest) -> None:
    services.review_decide(
        actor=UserFactory(username="compliance"), review=review, verdict="approve"
    )


def _label(template) -> Label | None:
    return Label.objects.filter(template=template, name="production").first()


def _client(username: str) -> Client:
    client = Client()
    assert client.login(username=username, password=PASSWORD)
    return client


def test_service(template, half_approved):
    owner = UserFactory(username="owner")
    version = template.latest_version
    with pytest.raises(Conflict) as exc:
        prompts.label_move(actor=owner, template=template, name="production", version=version)
    assert exc.value.message == (
        f"Label 'production' is protected: version 1 is not approved (review request "
        f"#{half_approved.pk} is open: {MISSING})."
    )
    assert exc.value.extra["missing"] == [MISSING]
    assert _label(template) is None and not LabelMove.objects.exists()
    _finish(half_approved)
    prompts.label_move(actor=owner, template=template, name="production", version=version)
    assert _label(template).version == version


def test_service_without_any_request_lists_the_whole_policy(template):
    with pytest.raises(Conflict, match="no open review request") as exc:
        prompts.label_move(
            actor=UserFactory(username="owner"),
            template=template,
            name="production",
            version=template.latest_version,
        )
    assert "needs 1 compliance approval, needs 1 SME approval" in exc.value.message


def test_unprotected_labels_are_not_gated(template):
    label = prompts.label_move(
        actor=UserFactory(username="engineer"),
        template=template,
        name="staging",
        version=template.latest_version,
    )
    assert label.version.number == 1


def test_api_with_an_owner_token(template, half_approved, api_as):
    owner = api_as("owner")
    url = "/api/v1/squads/acme/prompts/support/labels/production"
    refused = owner.call("PUT", url, {"version": 1})
    assert refused.status_code == 409
    assert MISSING in refused.json()["detail"]
    assert refused.json()["errors"]["missing"] == [MISSING]
    _finish(half_approved)
    moved = owner.call("PUT", url, {"version": 1})
    assert moved.status_code == 200 and moved.json()["version"] == 1


def test_prompt_page_label_view(template, half_approved):
    client = _client("owner")
    url = "/squads/acme/prompts/support/labels/production"
    refused = client.post(url, {"version": "1"}, headers={"HX-Request": "true"})
    body = refused.content.decode()
    assert refused.status_code == 409 and 'id="label-error"' in body and MISSING in body
    assert _label(template) is None
    _finish(half_approved)
    moved = client.post(url, {"version": "1"}, headers={"HX-Request": "true"})
    assert moved.status_code == 200 and _label(template).version.number == 1


def test_admin_console(template, half_approved):
    client = _client(UserFactory(username="ops", is_staff=True, is_superuser=True).username)
    form = {"template": template.pk, "name": "production", "version": template.latest_version.pk}
    refused = client.post("/admin/prompts/label/add/", form)
    assert refused.status_code == 302  # back to the form, with the reason as a message
    shown = [m.message for m in get_messages(refused.wsgi_request)]
    assert any(MISSING in m and "is protected" in m for m in shown), shown
    assert _label(template) is None
    _finish(half_approved)
    moved = client.post("/admin/prompts/label/add/", form)
    assert moved.status_code == 302 and _label(template).version.number == 1


def test_move_label_command(template, half_approved):
    args = ("move_label", "acme", "support", "production", "1", "--as", "owner")
    with pytest.raises(CommandError, match=MISSING):
        call_command(*args)
    _finish(half_approved)
    call_command(*args)
    assert _label(template).version.number == 1


def test_engineers_move_production_once_approved(template):
    approve(template.latest_version)
    label = prompts.label_move(
        actor=UserFactory(username="engineer"),
        template=template,
        name="production",
        version=template.latest_version,
    )
    assert label.version.number == 1


def test_withdrawn_rejected_and_changes_requested_versions_stay_out(template):
    owner = UserFactory(username="owner")
    v1 = template.latest_version
    review = approve(v1)
    services.review_withdraw(actor=owner, review=review)
    with pytest.raises(Conflict, match="no open review request"):
        prompts.label_move(actor=owner, template=template, name="production", version=v1)
    v2 = new_version(template, 2)
    rejected = services.review_decide(
        actor=UserFactory(username="sme"), review=open_review(v2), verdict="reject", comment="no"
    )
    with pytest.raises(Conflict, match=f"#{rejected.pk} is rejected: rejected by 1 reviewer"):
        prompts.label_move(actor=owner, template=template, name="production", version=v2)


def test_rollback_to_an_approved_version_keeps_working(template):
    owner = UserFactory(username="owner")
    v1 = template.latest_version
    approve(v1)
    prompts.label_move(actor=owner, template=template, name="production", version=v1)
    v2 = new_version(template, 2)
    approve(v2)
    prompts.label_move(actor=owner, template=template, name="production", version=v2)
    # v3's request is pending; v1 and v2 stay approved, so rolling back works.
    open_review(new_version(template, 3))
    prompts.label_move(actor=owner, template=template, name="production", version=v1)
    assert _label(template).version == v1


def test_newly_protected_labels_are_gated_at_once(template):
    services.approval_policy_update(
        actor=UserFactory(username="compliance"),
        squad=template.squad,
        protected_labels=["production", "canary"],
    )
    template.refresh_from_db()
    with pytest.raises(Conflict, match="Label 'canary' is protected"):
        prompts.label_move(
            actor=UserFactory(username="owner"),
            template=template,
            name="canary",
            version=template.latest_version,
        )


def test_label_move_reads_protection_from_the_row_not_a_stale_squad(template):
    """Web processes memo squad rows for a second (apps/core/memo.py): a squad object
    loaded before the policy change must not let the move through."""
    stale = template.squad
    assert "canary" not in stale.protected_labels
    services.approval_policy_update(
        actor=UserFactory(username="compliance"),
        squad=template.squad.__class__.objects.get(pk=stale.pk),
        protected_labels=["production", "canary"],
    )
    assert "canary" not in template.squad.protected_labels  # still the stale object
    with pytest.raises(Conflict, match="Label 'canary' is protected"):
        prompts.label_move(
            actor=UserFactory(username="owner"),
            template=template,
            name="canary",
            version=template.latest_version,
        )
