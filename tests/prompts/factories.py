from typing import Any

from apps.prompts import services

SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "customer": {
            "type": "object",
            "properties": {
                "name": {"type": "string", "minLength": 1},
                "tier": {"type": "string", "enum": ["free", "pro", "enterprise"]},
            },
            "required": ["name"],
        },
        "items": {"type": "array", "items": {"type": "integer"}, "maxItems": 5},
        "question": {"type": "string", "maxLength": 200000},
    },
    "required": ["customer", "question"],
}

MESSAGES = [
    {
        "role": "system",
        "content": "You help {{ customer.name }} ({{ customer.tier | default('free') }}).",
    },
    {
        "role": "user",
        "content": (
            "{% if items is defined %}{% for i in items %}#{{ i }} {% endfor %}{% endif %}"
            "{{ question }}"
        ),
    },
]


def content(**overrides: Any) -> dict[str, Any]:
    base = {
        "messages": MESSAGES,
        "input_schema": SCHEMA,
        "commit_message": "initial",
    }
    return {**base, **overrides}


def make_prompt(squad, actor, slug: str = "support", **overrides: Any):
    return services.prompt_template_create(
        actor=actor, squad=squad, slug=slug, tags=["support"], first_version=content(**overrides)
    )
