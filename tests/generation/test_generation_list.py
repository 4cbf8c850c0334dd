"""The squad's generations list (/squads/<squad>/generations/): filters, pages, links."""

import re

import pytest
from django.test import Client

from apps.generation.models import Generation
from apps.generation.views import PAGE_SIZE
from apps.prompts import services as prompts
from tests.factories import PASSWORD
from tests.feedback import factories as f
from tests.prompts.factories import content, make_prompt

pytestmark = pytest.mark.django_db
URL = "/squads/acme/generations/"


def _client(username: str = "viewer") -> Client:
    client = Client()
    assert client.login(username=username, password=PASSWORD)
    return client


def _ids(response) -> list[int]:
    return [
        int(n)
        for n in re.findall(r'href="/squads/acme/generations/(\d+)"', response.content.decode())
    ]


@pytest.fixture
def rows(squad):
    """support v1: 3 ok API rows, 1 failed, 1 flagged playground row; support v2: 1 ok;
    other v1: 1 ok."""
    v1 = f.version(squad)
    made = {"ok": [f.generation(squad) for _ in range(3)]}
    made["failed"] = f.generation(squad, status=Generation.Status.FAILED)
    flagged = f.generation(squad)
    Generation.objects.filter(pk=flagged.pk).update(
        source=Generation.Source.PLAYGROUND, findings=[{"kind": "pii", "type": "email"}]
    )
    made["flagged"] = flagged
    body = content(commit_message="second", model={"temperature": 0.5})
    v2 = prompts.prompt_version_create(actor=squad.created_by, template=v1.template, **body)
    made["v2"] = f.generation(squad, prompt_version=v2)
    other = make_prompt(squad, squad.created_by, slug="other")
    made["other"] = f.generation(squad, prompt_version=other.latest_version)
    return made


def test_every_member_sees_the_squads_generations_newest_first_with_links(rows):
    response = _client("viewer").get(URL)
    assert response.status_code == 200
    assert _ids(response) == sorted(Generation.objects.values_list("pk", flat=True), reverse=True)
    assert _client("outsider").get(URL).status_code == 404


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        ("prompt=other", ["other"]),
        ("prompt=support&version=2", ["v2"]),
        ("version=1&prompt=support&status=failed", ["failed"]),
        ("source=playground", ["flagged"]),
        ("flagged=yes", ["flagged"]),
        ("target=local&status=ok&prompt=support&version=1&flagged=no", ["ok"]),
    ],
)
def test_filters(rows, query, expected):
    wanted = []
    for key in expected:
        found = rows[key]
        wanted += [g.pk for g in found] if isinstance(found, list) else [found.pk]
    assert _ids(_client().get(f"{URL}?{query}")) == sorted(wanted, reverse=True)


@pytest.mark.parametrize(
    ("query", "field", "text"),
    [
        ("status=great", "status", "Unknown status &#x27;great&#x27;"),
        ("source=fax", "source", "Unknown source &#x27;fax&#x27;"),
        ("version=two", "version", "Version must be a whole number (got &#x27;two&#x27;)"),
        ("flagged=maybe", "flagged", "Flagged must be"),
    ],
)
def test_bad_filters_answer_422_naming_the_field(rows, query, field, text):
    response = _client().get(f"{URL}?{query}")
    assert response.status_code == 422
    body = response.content.decode()
    assert text in body
    assert re.search(rf'name="{field}"[^>]*aria-invalid="true"', body)


def test_pages_go_older_by_id_and_keep_the_filters(squad):
    made = [f.generation(squad) for _ in range(PAGE_SIZE + 3)]
    client = _client()
    first = client.get(f"{URL}?status=ok")
    ids = _ids(first)
    assert ids == [g.pk for g in reversed(made)][:PAGE_SIZE]
    older = re.search(r'href="\?([^"]+)" rel="next"', first.content.decode()).group(1)
    assert "status=ok" in older and f"before={ids[-1]}" in older
    second = client.get(f"{URL}?{older.replace('&amp;', '&')}")
    assert _ids(second) == [g.pk for g in reversed(made)][PAGE_SIZE:]
    assert 'rel="next"' not in second.content.decode()


def test_query_count_does_not_grow_with_rows(squad, django_assert_num_queries):
    for _ in range(3):
        f.generation(squad)
    client = _client()
    client.get(URL)  # warm the permission and navigation caches
    with django_assert_num_queries(9) as few:
        client.get(f"{URL}?prompt=support")
    for _ in range(20):
        f.generation(squad)
    make_prompt(squad, squad.created_by, slug="another")
    with django_assert_num_queries(len(few.captured_queries)):
        response = client.get(f"{URL}?prompt=support")
    assert len(_ids(response)) == 23
