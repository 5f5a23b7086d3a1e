"""Opaque bearer tokens checked at an RFC 7662 introspection endpoint served on loopback by the
test (the IdP), with the gateway in front of the real Orthanc: active tokens pass, inactive,
foreign, expired and scope-less ones get the exact 401/403; answers are cached and shared (one
introspection per token, whatever the concurrency); a flood of made-up tokens never has more
than the bounded number of introspections in flight; an IdP that is down is a 503 with
Retry-After (the token may be good), never a 401; a JWT still goes to the JWK Set."""

from __future__ import annotations

import asyncio
import base64
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from fhir.resources.R4B.operationoutcome import OperationOutcome

from ncpeh_dicomweb.app import create_app
from ncpeh_dicomweb.config import ConfigError, settings_from_mapping
from ncpeh_dicomweb.fhir.tokens import patient_resource_id
from tests.conftest import Pacs
from tests.unit.test_security_tokens import AUDIENCE, ISSUER, claims, jwks_document, rsa_key

pytestmark = pytest.mark.integration

ClientFactory = Callable[..., Awaitable[TestClient[Any, Any]]]
ServerFactory = Callable[..., Awaitable[TestServer]]
REALM = 'Bearer realm="ncpeh-dicomweb"'
CLIENT_ID = "ncp-imaging-gateway"
SECRET = "s3cret-of-the-gateway"
RSA = rsa_key("idp-rsa")


def _active(**extra: Any) -> dict[str, Any]:
    now = int(time.time())
    return {
        "active": True,
        "iss": ISSUER,
        "aud": AUDIENCE,
        "sub": "requesting-ncp",
        "client_id": "ncp-fr",
        "scope": "system/ImagingStudy.rs",
        "exp": now + 600,
        "token_type": "access_token",
        **extra,
    }


@dataclass
class Introspector:
    """The IdP's introspection endpoint: answers by token, records what it was asked."""

    answers: dict[str, dict[str, Any]] = field(default_factory=dict)
    asked: list[str] = field(default_factory=list)
    credentials: list[str] = field(default_factory=list)
    hints: list[str] = field(default_factory=list)
    in_flight: int = 0
    most_in_flight: int = 0
    delay: float = 0.0
    down: bool = False
    server: TestServer | None = None

    @property
    def url(self) -> str:
        assert self.server is not None
        return f"http://127.0.0.1:{self.server.port}/introspect"


@pytest.fixture
async def idp(aiohttp_server: ServerFactory) -> Introspector:
    state = Introspector()

    async def introspect(request: web.Request) -> web.Response:
        state.in_flight += 1
        state.most_in_flight = max(state.most_in_flight, state.in_flight)
        try:
            if state.delay:
                await asyncio.sleep(state.delay)
            form = await request.post()
            token = str(form.get("token", ""))
            state.asked.append(token)
            state.hints.append(str(form.get("token_type_hint", "")))
            state.credentials.append(request.headers.get("Authorization", ""))
            if state.down:
                return web.Response(status=503)
            return web.json_response(state.answers.get(token, {"active": False}))
        finally:
            state.in_flight -= 1

    async def jwks(request: web.Request) -> web.Response:
        return web.Response(body=jwks_document(RSA), content_type="application/json")

    app = web.Application()
    app.router.add_post("/introspect", introspect)
    app.router.add_get("/jwks.json", jwks)
    state.server = await aiohttp_server(app)
    return state


def _settings(pacs: Pacs, tmp_path: Path, idp: Introspector, **auth: Any) -> Any:
    return settings_from_mapping(
        {
            "sites": [{"id": "main", "url": pacs.dicomweb_root}],
            "state": {"sqlite": str(tmp_path / "state.sqlite3")},
            "auth": {
                "introspection_url": idp.url,
                "introspection_client_id": CLIENT_ID,
                "issuer": ISSUER,
                "audience": AUDIENCE,
                **auth,
            },
        },
        {"NCPEH_INTROSPECTION_CLIENT_SECRET": SECRET},
    )


@pytest.fixture
async def client(
    aiohttp_client: ClientFactory, pacs: Pacs, idp: Introspector, tmp_path: Path
) -> TestClient[Any, Any]:
    return await aiohttp_client(create_app(_settings(pacs, tmp_path, idp)))


def _bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def _invalid(description: str) -> str:
    return f'{REALM}, error="invalid_token", error_description="{description}"'


async def test_an_active_token_passes_and_the_gateway_authenticates_itself(
    client: TestClient[Any, Any], idp: Introspector
) -> None:
    idp.answers["opaque-good"] = _active()
    answer = await client.get("/dicom-web/studies?limit=1", headers=_bearer("opaque-good"))
    assert answer.status == 200, await answer.text()
    assert len(await answer.json()) == 1
    expected = base64.b64encode(f"{CLIENT_ID}:{SECRET}".encode()).decode()
    assert idp.credentials == [f"Basic {expected}"]
    assert idp.hints == ["access_token"]


@pytest.mark.parametrize(
    ("case", "answer", "description"),
    [
        ("unknown", None, "the token is not active"),
        ("revoked", {"active": False}, "the token is not active"),
        ("another issuer", _active(iss="https://evil.example"), "the token is from another issuer"),
        (
            "another audience",
            _active(aud=["https://other.example"]),
            "the token is meant for another audience",
        ),
        ("expired", _active(exp=int(time.time()) - 600), "the token has expired"),
        ("not yet valid", _active(nbf=int(time.time()) + 600), "the token is not valid yet"),
        (
            "a refresh token",
            _active(token_type="refresh_token"),
            "the token is not an access token",
        ),
        ("active as a string", {**_active(), "active": "true"}, "the token is not active"),
    ],
)
async def test_tokens_the_idp_does_not_vouch_for_are_401(
    client: TestClient[Any, Any],
    idp: Introspector,
    case: str,
    answer: dict[str, Any] | None,
    description: str,
) -> None:
    token = "opaque-" + case.replace(" ", "-")
    if answer is not None:
        idp.answers[token] = answer
    for path in ("/dicom-web/studies", "/fhir/ImagingStudy?patient.identifier=|456789123"):
        refused = await client.get(path, headers=_bearer(token))
        assert refused.status == 401, (case, path)
        assert refused.headers["WWW-Authenticate"] == _invalid(description)
    assert idp.asked == [token]  # the refusal is remembered a few seconds


async def test_a_token_without_the_scope_is_403(
    client: TestClient[Any, Any], idp: Introspector
) -> None:
    idp.answers["opaque-no-scope"] = _active(scope="openid")
    refused = await client.get("/dicom-web/studies", headers=_bearer("opaque-no-scope"))
    assert refused.status == 403
    assert 'error="insufficient_scope"' in refused.headers["WWW-Authenticate"]


async def test_one_introspection_per_token_however_many_requests(
    client: TestClient[Any, Any], idp: Introspector
) -> None:
    idp.answers["opaque-busy"] = _active()
    idp.delay = 0.3  # the first answer is slow: everyone arriving meanwhile joins it
    answers = await asyncio.gather(
        *(
            client.get("/dicom-web/studies?limit=1", headers=_bearer("opaque-busy"))
            for _ in range(20)
        )
    )
    assert [a.status for a in answers] == [200] * 20
    again = await client.get("/dicom-web/studies?limit=1", headers=_bearer("opaque-busy"))
    assert again.status == 200
    assert idp.asked == ["opaque-busy"]


async def test_a_flood_of_made_up_tokens_is_bounded_at_the_idp(
    client: TestClient[Any, Any], idp: Introspector
) -> None:
    idp.delay = 0.05
    answers = await asyncio.gather(
        *(client.get("/dicom-web/studies", headers=_bearer(f"forged-{n}")) for n in range(60))
    )
    assert {a.status for a in answers} == {401}
    assert len(idp.asked) == 60
    assert idp.most_in_flight <= 8


async def test_an_idp_that_is_down_is_503_with_retry_after_not_401(
    client: TestClient[Any, Any], idp: Introspector
) -> None:
    idp.answers["opaque-good"] = _active()
    idp.down = True
    dicomweb = await client.get("/dicom-web/studies", headers=_bearer("opaque-good"))
    assert dicomweb.status == 503
    assert dicomweb.headers["Retry-After"] == "5"
    assert "WWW-Authenticate" not in dicomweb.headers
    assert (await dicomweb.json())["message"] == "the token introspection service is unavailable"
    fhir = await client.get(
        "/fhir/ImagingStudy?patient.identifier=|456789123", headers=_bearer("opaque-good")
    )
    assert fhir.status == 503
    OperationOutcome.model_validate(await fhir.json())
    idp.down = False  # a failure is not remembered: the next request asks again
    assert (await client.get("/dicom-web/studies", headers=_bearer("opaque-good"))).status == 200


async def test_an_unreachable_idp_is_503(
    aiohttp_client: ClientFactory, pacs: Pacs, idp: Introspector, tmp_path: Path
) -> None:
    settings = _settings(pacs, tmp_path, idp)
    assert idp.server is not None
    await idp.server.close()  # nothing listens there any more
    client = await aiohttp_client(create_app(settings))
    answer = await client.get("/dicom-web/studies", headers=_bearer("opaque-good"))
    assert answer.status == 503


async def test_with_a_jwks_too_jwts_are_checked_locally_and_opaque_tokens_at_the_idp(
    aiohttp_client: ClientFactory, pacs: Pacs, idp: Introspector, tmp_path: Path
) -> None:
    assert idp.server is not None
    jwks_url = f"http://127.0.0.1:{idp.server.port}/jwks.json"
    client = await aiohttp_client(create_app(_settings(pacs, tmp_path, idp, jwks_url=jwks_url)))
    jwt = RSA.sign(claims())
    assert (await client.get("/dicom-web/studies", headers=_bearer(jwt))).status == 200
    assert idp.asked == []
    idp.answers["opaque-good"] = _active()
    assert (await client.get("/dicom-web/studies", headers=_bearer("opaque-good"))).status == 200
    assert idp.asked == ["opaque-good"]


async def test_a_patient_bound_opaque_token_sees_only_its_patient(
    client: TestClient[Any, Any], idp: Introspector, pacs: Pacs
) -> None:
    studies = pacs.manifest["core"]["studies"]
    everyone = {s["patient_id"] for s in studies}
    assert len(everyone) > 1
    study = studies[0]
    patient = study["patient_id"]
    resource_id = patient_resource_id(patient, study["issuer_of_patient_id"])
    idp.answers["opaque-patient"] = _active(patient=resource_id)
    answer = await client.get("/dicom-web/studies", headers=_bearer("opaque-patient"))
    assert answer.status == 200
    seen = {found["00100020"]["Value"][0] for found in await answer.json()}
    assert seen == {patient}


def test_introspection_needs_the_gateway_s_credentials(pacs: Pacs, tmp_path: Path) -> None:
    idp = Introspector()
    with pytest.raises(ConfigError, match="introspection_client_id"):
        settings_from_mapping(
            {
                "sites": [{"id": "main", "url": pacs.dicomweb_root}],
                "auth": {
                    "introspection_url": "http://127.0.0.1:9/introspect",
                    "introspection_client_id": CLIENT_ID,
                    "issuer": ISSUER,
                    "audience": AUDIENCE,
                },
            },
            {},
        )
    assert idp.asked == []
