"""The chain hashes what the database gives back: any JSON value and any address an
event carries verifies after the round trip through SQLite's JSON text and PostgreSQL's
jsonb and inet (issue 14, defect 3: -0.0 and 1e+16 read as tampering forever)."""

import json

import pytest
from django.core.management import call_command
from django.db import connection, transaction
from django.test import RequestFactory
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from apps.audit import chain
from apps.audit.models import AuditEvent
from apps.audit.services import audit_log, chain_verify

pytestmark = pytest.mark.django_db

# Every character, surrogates and NUL included.
TEXT = st.text(st.characters(codec=None, categories=None, exclude_categories=()), max_size=8)
NUMBERS = (
    st.integers(min_value=-(10**40), max_value=10**40)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.sampled_from([-0.0, 0.0, 1e16, 1e15, 1.5e300, -1e22, 5e-324, 1.5e-07, 1e-05, 2.0**53])
)
JSON_VALUES = st.recursive(
    st.none() | st.booleans() | NUMBERS | TEXT,
    lambda children: st.lists(children, max_size=4) | st.dictionaries(TEXT, children, max_size=4),
    max_leaves=16,
)
ADDRESSES = st.none() | st.ip_addresses().map(str) | st.sampled_from(["::102:304", "fe80::1%eth0"])
PROPERTY = settings(
    max_examples=120,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


def _exact(value: object) -> str:
    """JSON text that tells -0.0 from 0.0 and 1 from 1.0 (== does not)."""
    return json.dumps(value, sort_keys=True, ensure_ascii=False, allow_nan=True)


@PROPERTY
@given(data=JSON_VALUES, address=ADDRESSES)
def test_any_value_verifies_after_the_database_round_trip(db, data, address):
    request = RequestFactory().get("/", REMOTE_ADDR=address) if address else None
    with transaction.atomic():
        event = audit_log(actor=None, action="test.any", data={"v": data}, request=request)
    row = AuditEvent.objects.filter(pk=event.pk).values_list(*chain.CHAIN_FIELDS).get()
    record = dict(zip(chain.CHAIN_FIELDS, row, strict=True))
    assert chain.recompute(record) == record["hash"], (data, record["data"], record["ip"])
    assert _exact(record["data"]) == _exact(chain.storable({"v": data}))
    assert chain_verify().intact


@pytest.mark.postgres
@PROPERTY
@given(data=JSON_VALUES, address=ADDRESSES)
def test_storable_form_is_a_fixed_point_of_jsonb_and_inet(db, data, address):
    value = chain.storable(data)
    ip = chain.storable_ip(address)
    with connection.cursor() as cursor:
        cursor.execute("SELECT %s::jsonb::text, host(%s::inet)", [_exact(value), ip or "::1"])
        text, inet = cursor.fetchone()
    assert _exact(json.loads(text)) == _exact(value)
    if ip is not None:
        assert chain.address(inet) == ip


def test_storable_examples():
    assert _exact(chain.storable(-0.0)) == "0.0"
    assert chain.storable(1e16) == 10_000_000_000_000_000
    assert isinstance(chain.storable(1e16), int)
    assert chain.storable(1.5e300) == 15 * 10**299
    assert chain.storable(float("nan")) == "NaN"
    assert chain.storable({"a\x00": "\ud800x"}) == {"a\ufffd": "\ufffdx"}
    assert chain.storable("\ud83d\ude00") == "\U0001f600"
    assert chain.storable_ip("::102:304") == "::1.2.3.4"
    assert chain.address("::102:304") == chain.address("::1.2.3.4") == "::1.2.3.4"
    assert chain.storable_ip("fe80::1%eth0") == "fe80::1"
    assert chain.storable_ip("::FFFF:1.2.3.4") == "::ffff:1.2.3.4"
    assert chain.storable_ip("not an address") is None


def test_negative_zero_pass_rate_keeps_the_chain_intact(squad, api_as, capsys):
    """The probe's reproduction: a compliance lead sets min_eval_pass_rate to -0.0."""
    compliance = api_as("compliance")
    policy = compliance.call("GET", "/api/v1/squads/acme/approval-policy").json()
    body = json.dumps({**policy, "min_eval_pass_rate": 0}).replace(
        '"min_eval_pass_rate": 0', '"min_eval_pass_rate": -0.0'
    )
    assert "-0.0" in body
    response = compliance.call("PUT", "/api/v1/squads/acme/approval-policy", raw=body)
    assert response.status_code == 200, response.content
    assert AuditEvent.objects.filter(action="review.policy_updated").exists()
    call_command("audit_verify")
    assert "audit chain intact" in capsys.readouterr().out
