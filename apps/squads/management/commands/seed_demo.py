"""Create (or bring back) the demo squad with one user per role. Safe to run again."""

from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand
from django.db import transaction

from apps.squads import services
from apps.squads.models import Membership, Squad
from apps.squads.permissions import Role

DEMO_PASSWORD = "studio-demo"
DEMO_SLUG = "demo"
DEMO_USERS: list[tuple[str, Role]] = [
    ("olivia", Role.OWNER),
    ("priya", Role.PROMPT_ENGINEER),
    ("sam", Role.SME),
    ("carmen", Role.COMPLIANCE),
    ("victor", Role.VIEWER),
]
ADMIN_USER = "admin"


class Command(BaseCommand):
    help = "Create the demo squad with one user per role and a staff admin, and print the logins."

    def handle(self, *args: object, **options: object) -> None:
        User = get_user_model()
        with transaction.atomic():
            users = {}
            for username, _role in DEMO_USERS:
                user, created = User.objects.get_or_create(username=username)
                if created:
                    user.set_password(DEMO_PASSWORD)
                    user.save()
                users[username] = user
            admin, created = User.objects.get_or_create(
                username=ADMIN_USER, defaults={"is_staff": True, "is_superuser": True}
            )
            if created:
                admin.set_password(DEMO_PASSWORD)
                admin.save()
            owner = users[DEMO_USERS[0][0]]
            squad = Squad.objects.filter(slug=DEMO_SLUG).first()
            if squad is None:
                squad = services.squad_create(
                    actor=owner,
                    name="Demo squad",
                    slug=DEMO_SLUG,
                    description="A demo squad with one member per role.",
                )
            for username, role in DEMO_USERS:
                membership = Membership.objects.filter(squad=squad, user=users[username]).first()
                if membership is None:
                    services.membership_add(
                        actor=owner, squad=squad, user=users[username], roles=[role]
                    )
                elif role.value not in membership.roles:
                    services.membership_set_roles(
                        actor=owner, membership=membership, roles=[*membership.roles, role]
                    )
            _seed_prompt(squad, users)
            _seed_review_queue(squad, users)
            _seed_feedback(squad, users)
            _seed_test_cases(squad, users)
            _seed_target(squad, users)
        self.stdout.write(
            f"Demo squad '{DEMO_SLUG}' is ready. Logins (password '{DEMO_PASSWORD}'):"
        )
        for username, role in DEMO_USERS:
            self.stdout.write(f"  {username:<8} {role.label}")
        self.stdout.write(f"  {ADMIN_USER:<8} staff superuser (admin console at /admin/)")


# The demo prompt "summarise" v1 (bench/precision.py renders it for its demo-case eval).
DEMO_MESSAGES = [
    {"role": "system", "content": "You write short, faithful summaries."},
    {
        "role": "user",
        "content": "Summarise for {{ audience }} in at most {{ words }} words:\n\n{{ text }}",
    },
]


def _seed_prompt(squad: Squad, users: dict[str, object]) -> None:
    """A demo prompt whose version 1, written by priya and approved by sam (SME) and carmen
    (compliance), is on the production label (only when the prompt is missing)."""
    from apps.prompts import services as prompts
    from apps.prompts.models import PromptTemplate
    from apps.reviews.services import approvals as reviews

    if PromptTemplate.objects.filter(squad=squad, slug="summarise").exists():
        return
    template = prompts.prompt_template_create(
        actor=users["priya"],
        squad=squad,
        slug="summarise",
        description="Summarise a text for a given audience.",
        tags=["demo"],
        first_version={
            "messages": DEMO_MESSAGES,
            "input_schema": {
                "type": "object",
                "properties": {
                    "audience": {"type": "string", "enum": ["executives", "engineers"]},
                    "words": {"type": "integer", "minimum": 5, "maximum": 200},
                    "text": {"type": "string", "minLength": 1, "maxLength": 20000},
                },
                "required": ["audience", "words", "text"],
            },
            "model": {"target": "local", "temperature": 0.2, "max_new_tokens": 96},
            "commit_message": "First version",
        },
    )
    version = template.latest_version
    review = reviews.review_request_open(
        actor=users["priya"], version=version, note="Ready for the demo."
    )
    for reviewer in ("sam", "carmen"):
        review = reviews.review_decide(actor=users[reviewer], review=review, verdict="approve")
    prompts.label_move(actor=users["olivia"], template=template, name="production", version=version)


DEMO_OUTPUTS = [
    (
        "executives",
        "Quarterly revenue rose 12% on subscription growth; churn fell to 3%. "
        "Hiring is paused until the new pricing is tested.",
        "Revenue grew 12%, churn dropped to 3%, hiring paused pending pricing tests.",
    ),
    (
        "engineers",
        "The migration moves sessions to Redis, cuts login latency from 180 ms to 40 ms "
        "and needs a maintenance window of ten minutes.",
        "Sessions move to Redis: login latency 180 ms → 40 ms; 10-minute window needed.",
    ),
    (
        "executives",
        "Two suppliers missed delivery dates; the backlog is 1,400 orders and should clear "
        "in three weeks once the second warehouse opens.",
        "Suppliers are late and the backlog will never clear.",
    ),
]


def _seed_target(squad: Squad, users: dict[str, object]) -> None:
    """The squad's own local target on the default base model (only when missing)."""
    from apps.generation.models import ModelTarget
    from apps.generation.services import model_target_create

    if ModelTarget.objects.filter(squad=squad, name="support-local").exists():
        return
    model_target_create(
        actor=users["olivia"],
        squad=squad,
        name="support-local",
        kind="local",
        description="The default local model, answers capped at 200 tokens",
        default_params={"max_new_tokens": 200},
    )


def _seed_review_queue(squad: Squad, users: dict[str, object]) -> None:
    """An output review queue with a rubric and three summaries to annotate (only when
    the queue is missing). The outputs are written here, so no model has to run."""
    from apps.reviews.models import ReviewQueue
    from apps.reviews.services import queues

    if ReviewQueue.objects.filter(squad=squad, slug="summary-quality").exists():
        return
    queue = queues.review_queue_create(
        actor=users["priya"],
        squad=squad,
        name="Summary quality",
        instructions=(
            "Is the summary faithful to the text and right for its audience? "
            "Edit the output when a small change would make it acceptable."
        ),
        rubric=[
            {"name": "faithfulness", "kind": "numeric", "min": 1, "max": 5, "required": True},
            {
                "name": "tone",
                "kind": "categorical",
                "options": ["right", "too casual", "too dense"],
            },
            {"name": "within_word_limit", "kind": "boolean"},
        ],
        overlap=2,
        annotator_roles=[Role.SME, Role.COMPLIANCE, Role.OWNER],
    )
    queues.review_items_add_external(
        actor=users["priya"],
        queue=queue,
        items=[
            {
                "inputs": {"audience": audience, "words": 30, "text": text},
                "output": output,
                "prompt_version": {"prompt": "summarise", "version": 1},
                "model_name": "local",
            }
            for audience, text, output in DEMO_OUTPUTS
        ],
    )


def _seed_feedback(squad: Squad, users: dict[str, object]) -> None:
    """Two weeks of demo production traffic on summarise v1 (recorded as API generations
    with made-up latency, tokens and cost; no model runs) and feedback on some of them
    through the feedback service, so the prompt's dashboard has something to show (only
    when the squad has no feedback yet)."""
    from datetime import timedelta
    from decimal import Decimal

    from django.utils import timezone

    from apps.feedback.models import Feedback
    from apps.feedback.services import feedback_submit
    from apps.generation.models import Generation, ModelTarget
    from apps.prompts.models import PromptVersion

    if Feedback.objects.filter(squad=squad).exists():
        return
    version = PromptVersion.objects.filter(
        template__squad=squad, template__slug="summarise"
    ).first()
    target = ModelTarget.objects.filter(name="local", squad__isnull=True).first()
    if version is None or target is None:
        return
    now = timezone.now()
    rows = []
    for day in range(14):
        for n, (audience, text, output) in enumerate(DEMO_OUTPUTS):
            created = now - timedelta(days=13 - day, minutes=10 * n)
            rows.append(
                Generation(
                    squad=squad,
                    prompt_version=version,
                    target=target,
                    target_used="local",
                    variables={"audience": audience, "words": 30, "text": text},
                    output_text=output,
                    status=Generation.Status.OK,
                    source=Generation.Source.API,
                    input_tokens=60 + 7 * n,
                    output_tokens=24 + 3 * n + day % 4,
                    latency_ms=380 + 45 * n + 17 * (day % 5),
                    cost=Decimal("0.00004") * (n + 1),
                    created_at=created,
                    finished_at=created,
                )
            )
    generations = Generation.objects.bulk_create(rows)
    for i, generation in enumerate(generations):
        if i % 2:
            continue
        kind = i % 3
        if kind == 0:
            feedback_submit(
                actor=users["priya"], generation=generation, thumbs=-1 if i % 7 == 0 else 1
            )
        elif kind == 1:
            feedback_submit(
                actor=users["sam"], generation=generation, score=4 + i % 2, scale=[1, 5]
            )
        else:
            feedback_submit(
                actor=users["sam"],
                generation=generation,
                edited_text=generation.output_text.replace("dropped", "fell"),
                comment="closer to the source",
            )
        Feedback.objects.filter(generation=generation).update(created_at=generation.created_at)


DEMO_CASES = [
    {
        "name": "executive summary stays short",
        "variables": {
            "audience": "executives",
            "words": 20,
            "text": "Quarterly revenue rose 12% on subscription growth; churn fell to 3%.",
        },
        "assertions": [
            {"type": "max_output_tokens", "value": 60},
            {"type": "not_contains", "value": "As an AI", "case_sensitive": False},
        ],
        "tags": ["smoke"],
    },
    {
        "name": "keeps the key number",
        "variables": {
            "audience": "engineers",
            "words": 30,
            "text": "The migration cuts login latency from 180 ms to 40 ms.",
        },
        "assertions": [{"type": "contains", "value": "40"}],
        "tags": ["smoke", "fidelity"],
    },
    {
        "name": "no invented sentiment",
        "variables": {
            "audience": "executives",
            "words": 25,
            "text": "Two suppliers missed delivery dates; the backlog should clear in three weeks.",
        },
        "assertions": [{"type": "regex", "pattern": "(?i)three weeks|3 weeks"}],
        "tags": ["fidelity"],
    },
]


def _seed_test_cases(squad: Squad, users: dict[str, object]) -> None:
    """Three test cases for the demo prompt, written by sam (SME); only when it has none."""
    from apps.evals import services as evals
    from apps.prompts.models import PromptTemplate

    template = PromptTemplate.objects.filter(squad=squad, slug="summarise").first()
    if template is None or template.test_cases.exists():
        return
    for case in DEMO_CASES:
        evals.test_case_create(actor=users["sam"], template=template, **case)
