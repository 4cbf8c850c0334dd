import pytest
from django.contrib.auth.models import Permission
from django.contrib.messages import get_messages
from django.test import Client

from apps.audit.models import AuditEvent
from apps.reviews.models import ApprovalPolicy, ReviewRequest
from apps.reviews.services import approvals as services
from apps.squads.models import Squad
from tests.factories import PASSWORD, UserFactory
from tests.reviews.factories import engineer_prompt, open_review

pytestmark = pytest.mark.django_db


def _client(user) -> Client:
    client = Client()
    assert client.login(username=user.username, password=PASSWORD)
    return client


def _staff_non_member():
    staff = UserFactory(username="ops", is_staff=True)
    staff.user_permissions.set(
        Permission.objects.filter(
            content_type__app_label="reviews",
            codename__in=[
                "view_approvalpolicy",
                "change_approvalpolicy",
                "view_reviewrequest",
            ],
        )
    )
    return staff


def _messages(response) -> list[str]:
    return [m.message for m in get_messages(response.wsgi_request)]


def _policy_form(**over) -> dict:
    return {
        "required_approvals": '{"sme": 2, "compliance": 1}',
        "protected_labels": "production, canary",
        "changes_block": "on",
        "min_eval_pass_rate": "",
        **over,
    }


def test_policy_changes_in_the_console_go_through_the_service(squad):
    policy = services.approval_policy_get(squad=squad)
    admin = UserFactory(username="root", is_staff=True, is_superuser=True)
    response = _client(admin).post(
        f"/admin/reviews/approvalpolicy/{policy.pk}/change/", _policy_form()
    )
    assert response.status_code == 302, response.content[:2000]
    policy.refresh_from_db()
    assert policy.required_approvals == {"sme": 2, "compliance": 1} and policy.version == 2
    assert Squad.objects.get().protected_labels == ["canary", "production"]
    event = AuditEvent.objects.get(action="review.policy_updated")
    assert event.actor_label == "root"


def test_a_staff_member_outside_the_squad_is_refused_with_a_message(squad):
    policy = services.approval_policy_get(squad=squad)
    response = _client(_staff_non_member()).post(
        f"/admin/reviews/approvalpolicy/{policy.pk}/change/", _policy_form()
    )
    assert response.status_code == 302
    assert _messages(response) == ["Squad 'acme' not found."]
    assert ApprovalPolicy.objects.get().version == 1
    assert not AuditEvent.objects.filter(action="review.policy_updated").exists()


def test_bad_input_in_the_console_is_a_message_not_a_500(squad):
    policy = services.approval_policy_get(squad=squad)
    admin = UserFactory(username="root", is_staff=True, is_superuser=True)
    response = _client(admin).post(
        f"/admin/reviews/approvalpolicy/{policy.pk}/change/",
        _policy_form(required_approvals='{"viewer": 1}'),
    )
    assert response.status_code == 302
    assert "'viewer' is not a role that can approve" in _messages(response)[0]


def test_withdraw_action_uses_the_service(squad):
    review = open_review(engineer_prompt(squad).latest_version)
    data = {"action": "withdraw", "_selected_action": [review.pk]}
    refused = _client(_staff_non_member()).post("/admin/reviews/reviewrequest/", data)
    assert refused.status_code == 302
    assert _messages(refused) == [f"#{review.pk}: Squad 'acme' not found."]
    admin = UserFactory(username="root", is_staff=True, is_superuser=True)
    done = _client(admin).post("/admin/reviews/reviewrequest/", data)
    assert _messages(done) == ["Withdrew 1 review request(s)."]
    assert ReviewRequest.objects.get().state == ReviewRequest.State.WITHDRAWN
    assert AuditEvent.objects.get(action="review.withdrawn").actor_label == "root"
    # The request page shows its decisions read-only.
    assert (
        _client(admin).get(f"/admin/reviews/reviewrequest/{review.pk}/change/").status_code == 200
    )
