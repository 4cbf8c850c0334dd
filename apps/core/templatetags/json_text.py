"""`{{ value|json_text }}`: a value as compact JSON (true, null, "quotes"), not Python's
repr ({'enabled': True}), for data columns people read and copy."""

import json
from typing import Any

from django import template

register = template.Library()


@register.filter
def json_text(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, sort_keys=True, default=str)
