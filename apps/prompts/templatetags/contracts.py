"""`{{ error.where|where_label }}`: an error's place as the pages name it (Message 2, not
messages[1])."""

from django import template

from apps.prompts.contracts import where_label as _where_label

register = template.Library()


@register.filter
def where_label(where: str) -> str:
    return _where_label(str(where or ""))
