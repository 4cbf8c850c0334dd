"""Human review: approving prompt versions (Part A) and reviewing generated outputs (Part B).

Part A — an ApprovalPolicy per squad; a ReviewRequest on a PromptVersion whose state
is derived from its current ReviewDecisions under the policy snapshot taken when it
was opened; comment threads on versions; in-app notifications.

Part B — a ReviewQueue with a rubric and an overlap k; ReviewItems pointing at
generated outputs; a ReviewAssignment per (item, reviewer) claimed by "next item";
one Annotation per (item, reviewer); the queue's agreement statistics are kept
incrementally in `ReviewQueue.stats` so the dashboard costs the same at 100 or
100,000 items.
"""

from django.conf import settings
from django.db import models
from django.utils import timezone

User = settings.AUTH_USER_MODEL


def default_required_approvals() -> dict[str, int]:
    return {"sme": 1, "compliance": 1}


class ApprovalPolicy(models.Model):
    """What a version needs before a protected label may point at it.

    Which labels are protected is `Squad.protected_labels` (read on every label move
    and page); the policy service is the one place that edits it. A ReviewRequest
    copies the policy when opened (`ReviewRequest.policy`), so a change applies to
    requests opened after it."""

    squad = models.OneToOneField(
        "squads.Squad", on_delete=models.CASCADE, related_name="approval_policy"
    )
    # role value -> number of distinct approvers holding that role, e.g. {"sme": 1}
    required_approvals = models.JSONField(default=default_required_approvals)
    # A "request changes" decision blocks the request until a new version is reviewed.
    changes_block = models.BooleanField(default=True)
    # Every comment thread on the version must be resolved before the request counts as
    # approved (like GitHub's "require conversation resolution").
    threads_block = models.BooleanField(default=False)
    # Filled by the evaluation gate: minimum pass rate (0..1) of the latest eval run.
    min_eval_pass_rate = models.FloatField(null=True, blank=True)
    version = models.PositiveIntegerField(default=1)
    updated_at = models.DateTimeField(default=timezone.now)
    updated_by = models.ForeignKey(
        User, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )

    class Meta:
        verbose_name_plural = "approval policies"

    def __str__(self) -> str:
        return f"Approval policy of {self.squad} (v{self.version})"


class ReviewRequest(models.Model):
    """A request to approve one prompt version."""

    class State(models.TextChoices):
        OPEN = "open"
        APPROVED = "approved"
        CHANGES_REQUESTED = "changes_requested", "Changes requested"
        REJECTED = "rejected"
        WITHDRAWN = "withdrawn"
        SUPERSEDED = "superseded"

    # States in which the request still counts as "the" request of its version.
    HOLDING_STATES = (State.OPEN, State.APPROVED, State.CHANGES_REQUESTED, State.REJECTED)

    squad = models.ForeignKey(
        "squads.Squad", on_delete=models.CASCADE, related_name="review_requests"
    )
    template = models.ForeignKey(
        "prompts.PromptTemplate", on_delete=models.CASCADE, related_name="review_requests"
    )
    version = models.ForeignKey(
        "prompts.PromptVersion", on_delete=models.CASCADE, related_name="review_requests"
    )
    opened_by = models.ForeignKey(User, null=True, on_delete=models.SET_NULL, related_name="+")
    note = models.TextField(blank=True, max_length=5000)
    reviewers = models.ManyToManyField(User, blank=True, related_name="review_requests_named")
    state = models.CharField(max_length=17, choices=State.choices, default=State.OPEN)
    # The approval policy as it was when the request was opened:
    # {"version": n, "required_approvals": {...}, "changes_block": bool, "threads_block": bool,
    #  "min_eval_pass_rate": x}
    policy = models.JSONField()
    # Derived with the state, for lists: e.g. ["needs 1 compliance approval"]
    missing = models.JSONField(default=list, blank=True)
    superseded_by = models.ForeignKey(
        "self", null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    created_at = models.DateTimeField(default=timezone.now)
    updated_at = models.DateTimeField(default=timezone.now)
    closed_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at", "-pk"]
        constraints = [
            models.UniqueConstraint(
                fields=["version"],
                condition=models.Q(state__in=["open", "approved", "changes_requested", "rejected"]),
                name="review_request_one_per_version",
            )
        ]
        indexes = [
            models.Index(fields=["squad", "state", "created_at"], name="review_request_inbox"),
            models.Index(fields=["template", "state"], name="review_request_template"),
        ]

    def __str__(self) -> str:
        return f"Review #{self.pk} of {self.version_id} ({self.state})"


class ReviewDecision(models.Model):
    """One reviewer's verdict. Changing it adds a row and retires the old one (history)."""

    class Verdict(models.TextChoices):
        APPROVE = "approve"
        REQUEST_CHANGES = "request_changes", "Request changes"
        REJECT = "reject"

    request = models.ForeignKey(ReviewRequest, on_delete=models.CASCADE, related_name="decisions")
    reviewer = models.ForeignKey(User, on_delete=models.CASCADE, related_name="+")
    verdict = models.CharField(max_length=15, choices=Verdict.choices)
    comment = models.TextField(blank=True, max_length=5000)
    # The roles the reviewer held in the squad when deciding; the role counted comes from here.
    roles = models.JSONField(default=list)
    is_current = models.BooleanField(default=True)
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ["created_at", "pk"]
        constraints = [
            models.UniqueConstraint(
                fields=["request", "reviewer"],
                condition=models.Q(is_current=True),
                name="review_decision_one_current",
            )
        ]

    def __str__(self) -> str:
        return f"{self.reviewer_id}: {self.verdict} on #{self.request_id}"


class ReviewComment(models.Model):
    """A comment on a prompt version; a root comment opens a thread, replies point at it.
    Optionally anchored to one message (0-based index) and line (1-based)."""

    squad = models.ForeignKey("squads.Squad", on_delete=models.CASCADE, related_name="+")
    version = models.ForeignKey(
        "prompts.PromptVersion", on_delete=models.CASCADE, related_name="comments"
    )
    request = models.ForeignKey(
        ReviewRequest, null=True, blank=True, on_delete=models.SET_NULL, related_name="comments"
    )
    parent = models.ForeignKey(
        "self", null=True, blank=True, on_delete=models.CASCADE, related_name="replies"
    )
    author = models.ForeignKey(User, null=True, on_delete=models.SET_NULL, related_name="+")
    body = models.TextField(max_length=5000)
    message_index = models.PositiveSmallIntegerField(null=True, blank=True)
    line = models.PositiveIntegerField(null=True, blank=True)
    resolved_at = models.DateTimeField(null=True, blank=True)
    resolved_by = models.ForeignKey(
        User, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ["created_at", "pk"]
        indexes = [models.Index(fields=["version", "parent"], name="review_comment_thread")]

    def __str__(self) -> str:
        return f"Comment {self.pk} on {self.version_id}"


class Notification(models.Model):
    """An in-app notification for one user."""

    user = models.ForeignKey(User, on_delete=models.CASCADE, related_name="notifications")
    squad = models.ForeignKey(
        "squads.Squad", null=True, blank=True, on_delete=models.CASCADE, related_name="+"
    )
    kind = models.CharField(max_length=40)  # e.g. review.requested, review.decided
    text = models.CharField(max_length=500)
    url = models.CharField(max_length=500, blank=True)
    created_at = models.DateTimeField(default=timezone.now)
    read_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at", "-pk"]
        indexes = [models.Index(fields=["user", "read_at"], name="notification_unread")]

    def __str__(self) -> str:
        return f"{self.kind} for {self.user_id}"


# --- Part B: output review queues ---------------------------------------------------------


class ReviewQueue(models.Model):
    """Generated outputs waiting for human scores.

    `rubric` is a list of score configurations, each one of
    {"name": "accuracy", "kind": "numeric", "min": 1, "max": 5, "required": true},
    {"name": "tone", "kind": "categorical", "options": ["formal", "casual"]},
    {"name": "cites_source", "kind": "boolean"}.
    `stats` holds the incrementally maintained counters behind the dashboard."""

    squad = models.ForeignKey(
        "squads.Squad", on_delete=models.CASCADE, related_name="review_queues"
    )
    name = models.CharField(max_length=100)
    slug = models.SlugField(max_length=80)
    instructions = models.TextField(blank=True, max_length=10000)
    rubric = models.JSONField(default=list)
    overlap = models.PositiveSmallIntegerField(default=1, help_text="Distinct reviewers per item")
    annotator_roles = models.JSONField(default=list)
    stats = models.JSONField(default=dict, blank=True)
    created_by = models.ForeignKey(User, null=True, on_delete=models.SET_NULL, related_name="+")
    created_at = models.DateTimeField(default=timezone.now)
    archived_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["name"]
        constraints = [
            models.UniqueConstraint(fields=["squad", "slug"], name="review_queue_slug_unique")
        ]

    def __str__(self) -> str:
        return self.name


class ReviewItem(models.Model):
    """One generated output in a queue, with a snapshot of what produced it."""

    class Source(models.TextChoices):
        MANUAL = "manual"
        BATCH = "batch"
        API = "api"

    class Verdict(models.TextChoices):
        APPROVE = "approve"
        REJECT = "reject"

    queue = models.ForeignKey(ReviewQueue, on_delete=models.CASCADE, related_name="items")
    generation = models.ForeignKey(
        "generation.Generation",
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        related_name="review_items",
    )
    prompt_version = models.ForeignKey(
        "prompts.PromptVersion", null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    model_name = models.CharField(max_length=200, blank=True)
    inputs = models.JSONField(default=dict)
    output = models.TextField()
    source = models.CharField(max_length=6, choices=Source.choices)
    batch_job = models.ForeignKey(
        "generation.BatchJob", null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    # Reviewers holding a live or finished assignment; the item is full at the queue's overlap.
    claims = models.PositiveSmallIntegerField(default=0)
    is_full = models.BooleanField(default=False)
    annotation_count = models.PositiveSmallIntegerField(default=0)
    approvals = models.PositiveSmallIntegerField(default=0)
    disagreement = models.BooleanField(default=False)
    # Set by an owner or compliance lead settling a disagreement.
    adjudicated_verdict = models.CharField(max_length=7, choices=Verdict.choices, blank=True)
    adjudicated_output = models.TextField(blank=True)
    adjudicated_by = models.ForeignKey(
        User, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    adjudicated_at = models.DateTimeField(null=True, blank=True)
    adjudication_note = models.TextField(blank=True, max_length=5000)
    created_by = models.ForeignKey(User, null=True, on_delete=models.SET_NULL, related_name="+")
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ["pk"]
        constraints = [
            models.UniqueConstraint(
                fields=["queue", "generation"],
                condition=models.Q(generation__isnull=False),
                name="review_item_one_per_generation",
            )
        ]
        indexes = [
            # Item pages, keyset by id within a queue.
            models.Index(fields=["queue", "id"], name="review_item_queue_page"),
            # "Next item": the queue's items still short of k reviewers, in order.
            models.Index(
                fields=["queue", "id"],
                condition=models.Q(is_full=False),
                name="review_item_open",
            ),
            models.Index(
                fields=["queue", "id"],
                condition=models.Q(disagreement=True),
                name="review_item_disagreement",
            ),
        ]

    def __str__(self) -> str:
        return f"Item {self.pk} in {self.queue_id}"


class ReviewAssignment(models.Model):
    """A reviewer's claim on an item, taken by "next item"; it expires if never annotated."""

    item = models.ForeignKey(ReviewItem, on_delete=models.CASCADE, related_name="assignments")
    queue = models.ForeignKey(ReviewQueue, on_delete=models.CASCADE, related_name="+")
    reviewer = models.ForeignKey(User, on_delete=models.CASCADE, related_name="+")
    claimed_at = models.DateTimeField(default=timezone.now)
    expires_at = models.DateTimeField()
    completed_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["item", "reviewer"], name="review_assignment_once")
        ]
        indexes = [
            models.Index(
                fields=["queue", "reviewer"],
                condition=models.Q(completed_at__isnull=True),
                name="review_assignment_live",
            ),
            models.Index(
                fields=["queue", "expires_at"],
                condition=models.Q(completed_at__isnull=True),
                name="review_assignment_expiry",
            ),
        ]

    def __str__(self) -> str:
        return f"{self.reviewer_id} on item {self.item_id}"


class Annotation(models.Model):
    """One reviewer's judgement of one item."""

    item = models.ForeignKey(ReviewItem, on_delete=models.CASCADE, related_name="annotations")
    queue = models.ForeignKey(ReviewQueue, on_delete=models.CASCADE, related_name="+")
    reviewer = models.ForeignKey(User, on_delete=models.CASCADE, related_name="+")
    verdict = models.CharField(max_length=7, choices=ReviewItem.Verdict.choices)
    scores = models.JSONField(default=dict)
    edited_output = models.TextField(blank=True)
    # rapidfuzz Levenshtein distance between the original output and the edit (None: no edit)
    edit_distance = models.PositiveIntegerField(null=True, blank=True)
    comment = models.TextField(blank=True, max_length=5000)
    seconds_spent = models.PositiveIntegerField(default=0)
    created_at = models.DateTimeField(default=timezone.now)
    updated_at = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ["created_at", "pk"]
        constraints = [models.UniqueConstraint(fields=["item", "reviewer"], name="annotation_once")]
        indexes = [models.Index(fields=["queue", "reviewer"], name="annotation_queue_reviewer")]

    def __str__(self) -> str:
        return f"{self.reviewer_id} on item {self.item_id}: {self.verdict}"


class ReviewExport(models.Model):
    """Approved (and edited) outputs written out as training rows, with lineage."""

    squad = models.ForeignKey("squads.Squad", on_delete=models.CASCADE, related_name="+")
    queue = models.ForeignKey(ReviewQueue, on_delete=models.CASCADE, related_name="exports")
    created_by = models.ForeignKey(User, null=True, on_delete=models.SET_NULL, related_name="+")
    created_at = models.DateTimeField(default=timezone.now)
    path = models.CharField(max_length=500)
    sha256 = models.CharField(max_length=64)
    row_count = models.PositiveIntegerField()
    # {"items": [ids], "annotators": [user ids], "filters": {...}}
    lineage = models.JSONField(default=dict)

    class Meta:
        ordering = ["-created_at", "-pk"]

    def __str__(self) -> str:
        return f"Export {self.pk} of {self.queue_id} ({self.row_count} rows)"
