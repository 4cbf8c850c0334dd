import base64
import copy

import pytest

from apps.generation import services
from apps.governance import provenance
from tests.factories import UserFactory
from tests.generation.conftest import remote_target, text_prompt

pytestmark = pytest.mark.django_db
K1 = "k1:" + base64.b64encode(b"first-provenance-key-32-bytes!!!").decode()
K2 = "k2:" + base64.b64encode(b"second-provenance-key-32-bytes!!").decode()


@pytest.fixture
def generation(squad, fake_server, policy):
    remote_target(squad, fake_server.url)
    g = services.generation_request(
        actor=UserFactory(username="engineer"),
        version=text_prompt(squad),
        variables={"topic": "tides"},
    )
    return services.generation_run(generation_id=g.pk)


def _verify(g, **changes):
    body = {
        "manifest": g.provenance,
        "signature": g.provenance_signature,
        "key_id": g.provenance_key_id,
        "output": g.output_text,
        **changes,
    }
    return provenance.verify(**body)


def test_manifest_records_the_call(generation, policy):
    m = generation.provenance
    assert m["prompt"]["template"] == "writer" and m["prompt"]["version"] == 1
    assert m["prompt"]["content_hash"] == generation.prompt_version.content_hash
    assert m["target"] == {"name": "fake", "kind": "remote", "model": ""}
    assert m["parameters"]["max_new_tokens"] == 16 and m["parameters"]["seed"] == 1
    assert m["input_sha256"] == generation.rendered_hash
    assert m["output_sha256"] == provenance.sha256_text("echo: Write about tides.")
    assert m["policy_version"] == policy.number and m["status"] == "ok"
    assert generation.provenance_key_id == "dev"  # derived from SECRET_KEY in development
    assert _verify(generation).valid


def test_tampered_output_is_rejected(generation):
    verdict = _verify(generation, output=generation.output_text + " (edited)")
    assert not verdict.valid and "output's sha256 differs" in verdict.reasons[0]


def test_tampered_manifest_is_rejected(generation):
    manifest = copy.deepcopy(generation.provenance)
    manifest["parameters"]["temperature"] = 0.9
    verdict = _verify(generation, manifest=manifest)
    assert not verdict.valid and "signature does not match" in verdict.reasons[0]


def test_unknown_key_id_is_rejected(generation):
    verdict = _verify(generation, key_id="k9")
    assert not verdict.valid and verdict.reasons == ["Unknown key id 'k9'."]


def test_rotation_keeps_old_key_ids_verifiable(settings, generation):
    settings.STUDIO_PROVENANCE_KEYS = K1
    old = provenance.sign({"output_sha256": provenance.sha256_text("x")})
    settings.STUDIO_PROVENANCE_KEYS = f"{K2},{K1}"
    new = provenance.sign({"output_sha256": provenance.sha256_text("x")})
    assert (old.key_id, new.key_id) == ("k1", "k2")
    for signed in (old, new):
        assert provenance.verify(
            manifest=signed.manifest, signature=signed.signature, key_id=signed.key_id, output="x"
        ).valid
    settings.STUDIO_PROVENANCE_KEYS = K2  # k1 retired
    assert not provenance.verify(
        manifest=old.manifest, signature=old.signature, key_id="k1", output="x"
    ).valid


def test_malformed_keys_setting_is_refused(settings):
    from django.core.exceptions import ImproperlyConfigured

    settings.STUDIO_PROVENANCE_KEYS = "k1:short"
    with pytest.raises(ImproperlyConfigured, match="entry 1"):
        provenance.signing_keys()


def test_provenance_api_and_verify_endpoint(generation, api_as):
    url = f"/api/v1/generations/{generation.pk}/provenance"
    body = api_as("viewer").call("GET", url).json()
    assert body["manifest"] == generation.provenance and body["key_id"] == "dev"
    assert api_as("outsider").call("GET", url).status_code == 404
    assert api_as("viewer").call("GET", "/api/v1/generations/999999/provenance").status_code == 404
    verify = api_as("outsider")  # verifying needs no squad: the manifest is the evidence
    good = {
        **{k: body[k] for k in ("manifest", "signature", "key_id")},
        "output": "echo: Write about tides.",
    }
    assert verify.call("POST", "/api/v1/provenance/verify", good).json() == {
        "valid": True,
        "reasons": [],
    }
    bad = verify.call("POST", "/api/v1/provenance/verify", {**good, "output": "other"}).json()
    assert bad["valid"] is False and bad["reasons"]


def test_generation_page_shows_findings_and_provenance(squad, generation, client):
    client.login(username="viewer", password="correct-horse-battery")
    html = client.get(f"/squads/acme/generations/{generation.pk}").content.decode()
    assert "Provenance (signed with key <code>dev</code>)" in html
    assert generation.provenance_signature in html
