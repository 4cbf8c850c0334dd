import pytest
from django.core.management import call_command

from apps.evals.models import TestCase as Case

pytestmark = pytest.mark.django_db


def test_seed_demo_adds_three_test_cases_once():
    call_command("seed_demo")
    call_command("seed_demo")
    cases = Case.objects.filter(template__slug="summarise", squad__slug="demo")
    assert cases.count() == 3
    assert {t for c in cases for t in c.tags} == {"smoke", "fidelity"}
    assert all(c.created_by.username == "sam" for c in cases)
