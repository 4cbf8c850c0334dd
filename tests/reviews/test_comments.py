import pytest

from apps.audit.models import AuditEvent
from apps.core.exceptions import NotFound, PermissionDenied, ValidationFailed
from apps.reviews.models import Notification
from apps.reviews.selectors import approvals as selectors
from apps.reviews.services import approvals as services
from tests.factories import UserFactory
from tests.reviews.factories import engineer_prompt, new_version, open_review

pytestmark = pytest.mark.django_db


@pytest.fixture
def version(squad):
    # Message 0 has one line, message 1 two ("Version 2:" and the question).
    template = engineer_prompt(squad)
    return new_version(template, 2)


def add(who: str, version, body: str = "Hmm.", **kwargs):
    return services.comment_add(
        actor=UserFactory(username=who), version=version, body=body, **kwargs
    )


def test_threads_replies_and_anchors(version):
    root = add("sme", version, "Is line 2 right?", message_index=1, line=2)
    reply = add("engineer", version, "Yes.", parent=root)
    nested = add("compliance", version, "Agreed.", parent=reply)
    # Replies join the thread's root and share its anchor.
    assert reply.parent_id == root.pk and nested.parent_id == root.pk
    assert (nested.message_index, nested.line) == (1, 2)
    other = add("owner", version, "General remark.")
    threads = list(
        selectors.comment_thread_list_for_user(user=UserFactory(username="viewer"), version=version)
    )
    assert [(t.pk, [r.pk for r in t.replies.all()]) for t in threads] == [
        (root.pk, [reply.pk, nested.pk]),
        (other.pk, []),
    ]
    event = AuditEvent.objects.filter(action="review.comment_added").last()
    assert event.data["thread"] == other.pk


def test_thread_query_count_is_fixed(version, django_assert_num_queries):
    viewer = UserFactory(username="viewer")
    for i in range(5):
        root = add("sme", version, f"thread {i}")
        for _ in range(3):
            add("engineer", version, "reply", parent=root)
    selectors.comment_thread_list_for_user(user=viewer, version=version)  # warm permissions
    with django_assert_num_queries(2):
        threads = list(selectors.comment_thread_list_for_user(user=viewer, version=version))
        names = {r.author.username for t in threads for r in t.replies.all()}
        names |= {t.author.username for t in threads}
    assert names == {"sme", "engineer"} and len(threads) == 5


@pytest.mark.parametrize(
    ("kwargs", "field", "message"),
    [
        ({"body": "  "}, "body", "The comment must not be empty."),
        ({"body": "x" * 5001}, "body", "5001 characters long; the limit is 5000"),
        ({"message_index": 2}, "message_index", "has 2 messages; there is no message 3"),
        ({"message_index": 0, "line": 2}, "line", "Message 1 of version 2 has 1 line;"),
        ({"message_index": 1, "line": 3}, "line", "has 2 lines; there is no line 3"),
        ({"message_index": 1, "line": 0}, "line", "there is no line 0"),
        ({"line": 1}, "message_index", "A line needs the message it is in."),
    ],
)
def test_comment_refusals(version, kwargs, field, message):
    with pytest.raises(
        ValidationFailed, match=message.replace("(", r"\(").replace(")", r"\)")
    ) as exc:
        add("sme", version, **{"body": "ok", **kwargs})
    assert exc.value.field == field


def test_replies_cannot_be_anchored_or_cross_versions(version):
    root = add("sme", version, message_index=0)
    with pytest.raises(ValidationFailed, match="cannot be anchored") as exc:
        add("engineer", version, parent=root, message_index=1)
    assert exc.value.field == "message_index"
    v1 = version.template.versions.get(number=1)
    with pytest.raises(ValidationFailed, match=f"Comment #{root.pk} is not on version 1"):
        add("engineer", v1, parent=root)
    review = open_review(v1)
    with pytest.raises(ValidationFailed, match=f"#{review.pk} is not about version 2") as exc:
        add("engineer", version, review=review)
    assert exc.value.field == "review_request"


def test_who_may_comment(version):
    with pytest.raises(PermissionDenied):
        add("viewer", version)
    with pytest.raises(NotFound):
        add("outsider", version)


def test_resolve_and_reopen(version):
    root = add("sme", version, "Typo")
    reply = add("engineer", version, "Fixed", parent=root)
    with pytest.raises(ValidationFailed, match=f"resolve its thread \\(comment #{root.pk}\\)"):
        services.comment_resolve(actor=UserFactory(username="engineer"), comment=reply)
    with pytest.raises(PermissionDenied):
        services.comment_resolve(actor=UserFactory(username="viewer"), comment=root)
    resolved = services.comment_resolve(actor=UserFactory(username="engineer"), comment=root)
    assert resolved.resolved_at is not None and resolved.resolved_by.username == "engineer"
    # Resolving again changes nothing; reopening clears it.
    services.comment_resolve(actor=UserFactory(username="sme"), comment=root)
    assert AuditEvent.objects.filter(action="review.comment_resolved").count() == 1
    reopened = services.comment_resolve(
        actor=UserFactory(username="sme"), comment=root, resolved=False
    )
    assert reopened.resolved_at is None and reopened.resolved_by is None
    assert AuditEvent.objects.filter(action="review.comment_reopened").count() == 1


def test_comments_notify_the_author_and_the_thread(version):
    root = add("sme", version, "Typo")
    add("compliance", version, "Also the tone", parent=root)
    told = {
        (n.user.username, n.kind)
        for n in Notification.objects.filter(kind="review.commented").select_related("user")
    }
    # The author (engineer) hears of both; the thread's starter of the reply; nobody of
    # their own comment.
    assert told == {
        ("engineer", "review.commented"),
        ("sme", "review.commented"),
    }
    assert Notification.objects.filter(user__username="engineer").count() == 2
