"""The squad detail as a plain Django view (apps/core/plainapi.py).

`GET /api/v1/squads/{slug}` is the call an API client makes to learn what it may do in
a squad. GET and HEAD are answered here with the same selector, body
(`api.squad_out`) and errors as the ninja operation, which documents the endpoint and
serves PATCH. Warm, it runs no query: the token, the squad row, the permission set and
the roles all come from this process's memo (apps/core/memo.py) or the shared cache.
"""

import json

from django.http import HttpRequest, HttpResponse
from ninja.responses import NinjaJSONEncoder

from apps.core.plainapi import plain_get
from apps.squads import selectors
from apps.squads.api import squad_out


@plain_get
def squad_detail(request: HttpRequest, user: object, slug: str) -> HttpResponse:
    squad = selectors.squad_get_for_user(user=user, slug=slug)
    body = json.dumps(squad_out(user, squad), cls=NinjaJSONEncoder)
    return HttpResponse(body, content_type="application/json; charset=utf-8")
