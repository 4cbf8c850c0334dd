"""The squad's model target pages (apps/generation/target_views.py): the list, and the
create and edit form of those who manage targets, with the base model chosen from the
registry and an adapter offered only when trained on that base's registration."""

import json

import pytest
from django.test import Client
from django.utils import timezone

from apps.audit.models import AuditEvent
from apps.basemodels.models import BaseModel
from apps.finetune.models import Adapter, FineTuneJob
from apps.generation.models import ModelTarget
from tests.basemodels.factories import ready_model
from tests.factories import PASSWORD, UserFactory
from tests.finetune.conftest import chat, jsonl, make_dataset, upload

pytestmark = pytest.mark.django_db

LIST = "/squads/acme/targets/"
NEW = "/squads/acme/targets/new"
DEFAULT = "smollm2-135m-instruct"


@pytest.fixture(autouse=True)
def data_dir(settings, tmp_path):
    settings.DATA_DIR = tmp_path
    return tmp_path


def client(username: str) -> Client:
    c = Client()
    assert c.login(username=username, password=PASSWORD)
    return c


def adapter_on(squad, base_model: str, *, approved: bool = True) -> Adapter:
    """An adapter record trained on `base_model`'s current registration (no training)."""
    slug = f"ds-{Adapter.objects.count()}"
    version = upload(make_dataset(squad, slug=slug), jsonl(chat("q", "a")))
    job = FineTuneJob.objects.create(
        squad=squad,
        dataset_version=version,
        target=ModelTarget.objects.get(name="local", squad__isnull=True),
        base_model=base_model,
        created_by=UserFactory(username="engineer"),
        status="succeeded",
    )
    return Adapter.objects.create(
        squad=squad,
        job=job,
        dataset_version=version,
        path="/nonexistent",
        sha256="a" * 64,
        size_bytes=1,
        base_model=base_model,
        base_model_sha256=BaseModel.objects.get(name=base_model).current.manifest_sha256,
        approved_at=timezone.now() if approved else None,
    )


def form(**fields) -> dict[str, str]:
    return {
        "name": "mine",
        "kind": "local",
        "description": "",
        "base_model": DEFAULT,
        "adapter": "",
        "context_length": "",
        "price_input_per_1k": "0",
        "price_output_per_1k": "0",
        "default_params": "{}",
        **fields,
    }


def test_the_list_is_reached_from_the_squad_page_and_shows_every_target(squad):
    ModelTarget.objects.create(squad=squad, name="own", kind="local", base_model=DEFAULT)
    page = client("viewer").get("/squads/acme/").content.decode()
    assert f'href="{LIST}"' in page
    page = client("viewer").get(LIST).content.decode()
    assert 'id="target-own"' in page and 'id="target-local-global"' in page
    assert NEW not in page and "/edit" not in page  # a viewer manages nothing
    page = client("owner").get(LIST).content.decode()
    assert f'href="{NEW}"' in page and 'href="/squads/acme/targets/own/edit"' in page


def test_an_owner_creates_a_local_target_on_a_registered_model_with_its_adapter(squad):
    other = ready_model("other-model", licence="Apache-2.0", context_length=2048)
    mine = adapter_on(squad, "other-model")
    foreign = adapter_on(squad, DEFAULT)
    adapter_on(squad, "other-model", approved=False)
    owner = client("owner")
    page = owner.get(NEW).content.decode()
    # the base-model choice shows size, context and licence
    assert "other-model v1 — 1,000,000 parameters" in page
    assert "context 2048, licence Apache-2.0" in page
    # the adapter choice of one base (htmx swaps it when the base changes)
    partial = owner.get(
        NEW, {"base_model": "other-model"}, HTTP_HX_REQUEST="true", HTTP_HX_TARGET="adapter-field"
    ).content.decode()
    assert partial.lstrip().startswith('<div id="adapter-field">')
    assert f'value="{mine.pk}"' in partial and f'value="{foreign.pk}"' not in partial
    assert partial.count("<option") == 2  # none, and the one approved adapter
    response = owner.post(
        NEW, form(base_model="other-model", adapter=str(mine.pk), description="Tuned")
    )
    assert response.status_code == 302 and response["Location"] == f"{LIST}#target-mine"
    target = ModelTarget.objects.get(squad=squad, name="mine")
    assert (target.base_model, target.lora_adapter_id) == ("other-model", mine.pk)
    assert target.context_length == other.context_length
    assert AuditEvent.objects.filter(action="generation.target_created").count() == 1
    assert AuditEvent.objects.filter(action="generation.target_adapter_set").count() == 1


def test_an_adapter_of_another_base_is_refused_by_the_service_on_the_adapter_field(squad):
    ready_model("other-model")
    foreign = adapter_on(squad, DEFAULT)
    response = client("owner").post(NEW, form(base_model="other-model", adapter=str(foreign.pk)))
    page = response.content.decode()
    assert response.status_code == 422
    assert "<code>adapter</code>" in page
    assert "only goes on the base model it was trained on" in page
    assert 'id="t-adapter" name="adapter" aria-invalid="true"' in page
    assert not ModelTarget.objects.filter(name="mine").exists()  # nothing half-made


@pytest.mark.parametrize(
    ("fields", "field", "message"),
    [
        ({"name": "has space"}, "name", ""),
        ({"name": ""}, "name", ""),
        ({"kind": "quantum"}, "kind", "kind must be"),
        ({"base_model": "nope"}, "base_model", "Unknown base model"),
        ({"context_length": "many"}, "context_length", "whole number"),
        ({"context_length": "10"}, "context_length", "256 to 1048576"),
        ({"context_length": "9000"}, "context_length", "longer than base model"),
        ({"price_input_per_1k": "NaN"}, "price_input_per_1k", "must be a number"),
        ({"price_input_per_1k": "abc"}, "price_input_per_1k", "must be a number"),
        ({"price_output_per_1k": "1e12"}, "price_output_per_1k", "below 1000000"),
        ({"price_output_per_1k": "-1"}, "price_output_per_1k", "negative"),
        ({"default_params": "{"}, "default_params", "not valid JSON"),
        ({"default_params": "[1]"}, "default_params", "must be an object"),
        ({"description": "x" * 501}, "description", "limit is 500"),
        ({"adapter": "x"}, "adapter", "whole number"),
        ({"adapter": "999999"}, "adapter", "not found"),
        ({"kind": "remote", "base_url": "ftp://x"}, "base_url", "http(s) URL"),
        ({"kind": "remote", "base_url": "http://x", "token_env": "hf_abc"}, "token_env", "NAME"),
    ],
)
def test_bad_input_is_shown_on_the_form_naming_the_field(squad, fields, field, message):
    response = client("owner").post(NEW, form(**fields))
    page = response.content.decode()
    assert 400 <= response.status_code < 500, page[:500]
    assert f"<code>{field}</code>" in page
    assert message in page
    assert not ModelTarget.objects.filter(squad=squad).exists()


def test_a_name_taken_in_the_squad_is_a_conflict(squad):
    ModelTarget.objects.create(squad=squad, name="mine", kind="local", base_model=DEFAULT)
    response = client("owner").post(NEW, form())
    assert response.status_code == 409
    assert "already exists" in response.content.decode()


def test_an_owner_edits_a_target_and_its_adapter_follows_its_base(squad):
    ready_model("other-model")
    tuned = adapter_on(squad, DEFAULT)
    owner = client("owner")
    assert owner.post(NEW, form(adapter=str(tuned.pk))).status_code == 302
    edit = "/squads/acme/targets/mine/edit"
    page = owner.get(edit).content.decode()
    assert f'<option value="{tuned.pk}" selected>' in page
    # another base while the adapter stays: refused on the adapter, nothing changed
    response = owner.post(edit, form(base_model="other-model", adapter=str(tuned.pk), enabled="on"))
    assert response.status_code == 422
    assert "only goes on the base model it was trained on" in response.content.decode()
    target = ModelTarget.objects.get(name="mine")
    assert (target.base_model, target.lora_adapter_id) == (DEFAULT, tuned.pk)
    # another base without the adapter, a description, disabled: saved, audited
    response = owner.post(edit, form(base_model="other-model", description="Moved"))
    assert response.status_code == 302
    target.refresh_from_db()
    assert (target.base_model, target.lora_adapter_id) == ("other-model", None)
    assert (target.description, target.enabled) == ("Moved", False)
    event = AuditEvent.objects.get(action="generation.target_updated")
    assert {"base_model", "description", "enabled"} <= set(event.data["changed"])


def test_only_those_who_manage_targets_get_the_forms(squad):
    ModelTarget.objects.create(squad=squad, name="own", kind="local", base_model=DEFAULT)
    for username in ("engineer", "sme", "compliance", "viewer"):
        c = client(username)
        assert c.get(NEW).status_code == 403
        assert c.post(NEW, form()).status_code == 403
        assert c.get("/squads/acme/targets/own/edit").status_code == 403
    outsider = client("outsider")
    assert outsider.get(LIST).status_code == 404
    assert outsider.get(NEW).status_code == 404
    assert client("owner").get("/squads/acme/targets/local/edit").status_code == 404  # global
    assert not ModelTarget.objects.filter(name="mine").exists()


def test_the_api_changes_a_target_through_the_same_service(squad, api_as):
    ready_model("other-model")
    tuned = adapter_on(squad, DEFAULT)
    ModelTarget.objects.create(squad=squad, name="own", kind="local", base_model=DEFAULT)
    owner = api_as("owner")
    url = "/api/v1/squads/acme/targets/own"
    response = owner.call("PUT", url, {"adapter": tuned.pk, "description": "Tuned"})
    assert response.status_code == 200, response.content
    assert response.json()["description"] == "Tuned"
    assert ModelTarget.objects.get(name="own").lora_adapter_id == tuned.pk
    response = owner.call("PUT", url, {"base_model": "other-model", "adapter": tuned.pk})
    assert response.status_code == 422
    assert response.json()["field"] == "adapter"
    for body, field in (
        ({"adapter": 999999}, "adapter"),
        ({"price_input_per_1k": "1e30"}, "price_input_per_1k"),
        ({"context_length": 10**12}, "context_length"),
        ({"base_url": "http://x"}, "base_url"),
    ):
        response = owner.call("PUT", url, body)
        assert 400 <= response.status_code < 500 and response.json()["field"] == field, body
    assert owner.call("PUT", "/api/v1/squads/acme/targets/local", {}).status_code == 404


def test_the_api_attaches_an_adapter_at_creation_and_shows_it(squad, api_as):
    tuned = adapter_on(squad, DEFAULT)
    owner = api_as("owner")
    url = "/api/v1/squads/acme/targets"
    body = {"name": "tuned", "kind": "local", "base_model": DEFAULT, "adapter": tuned.pk}
    response = owner.call("POST", url, body)
    assert response.status_code == 201, response.content
    assert response.json()["adapter"] == tuned.pk
    assert ModelTarget.objects.get(name="tuned").lora_adapter_id == tuned.pk
    listed = {t["name"]: t for t in owner.call("GET", url).json()}
    assert listed["tuned"]["adapter"] == tuned.pk and listed["local"]["adapter"] is None
    for bad, field in (
        ({"name": "b1", "adapter": True}, "adapter"),  # not read as adapter 1
        ({"name": "b2", "adapter": 999999}, "adapter"),
        ({"name": "b3", "context_length": 0}, "context_length"),  # not the default
    ):
        response = owner.call("POST", url, {"kind": "local", **bad})
        assert 400 <= response.status_code < 500, (bad, response.content)
        assert field in json.dumps(response.json()), (bad, response.json())
        assert not ModelTarget.objects.filter(name=bad["name"]).exists()
