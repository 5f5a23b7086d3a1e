"""Bearer tokens on the gateway in front of the real Orthanc, with the IdP's JWK Set served on
loopback by the test: every refusal gets its exact status, WWW-Authenticate and body form on
DICOMweb (QIDO, WADO), FHIR (search, read) and the vendor route; valid tokens pass; the key set
rotates and survives its IdP going down; and the start-up rule (no keys: loopback only)."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import requests
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from fhir.resources.capabilitystatement import CapabilityStatement as CapabilityStatementR5
from fhir.resources.R4B.capabilitystatement import CapabilityStatement as CapabilityStatementR4
from fhir.resources.R4B.operationoutcome import OperationOutcome

from ncpeh_dicomweb.app import create_app
from ncpeh_dicomweb.config import settings_from_mapping
from tests.conftest import ROOT, Pacs, free_port, start_gateway, stop_gateway
from tests.unit.test_security_tokens import (
    AUDIENCE,
    ISSUER,
    SigningKey,
    alg_none,
    claims,
    ec_key,
    ed_key,
    hs256_with_public_key,
    jwks_document,
    rsa_key,
)

pytestmark = pytest.mark.integration

ClientFactory = Callable[..., Awaitable[TestClient[Any, Any]]]
ServerFactory = Callable[..., Awaitable[TestServer]]
REALM = 'Bearer realm="ncpeh-dicomweb"'
VIEWER = "https://viewer.example"
SCOPE = "system/ImagingStudy.rs"

RSA = rsa_key("idp-rsa")
EC = ec_key("idp-ec")
ED = ed_key("idp-ed")
FORGER = rsa_key("idp-rsa")  # the IdP's kid, another key


@dataclass
class Idp:
    """The JWK Set endpoint of a test IdP: its document can change, it can go down."""

    document: bytes
    server: TestServer | None = None
    down: bool = False
    hits: int = 0

    @property
    def url(self) -> str:
        assert self.server is not None
        return f"http://127.0.0.1:{self.server.port}/jwks.json"


@pytest.fixture
async def idp(aiohttp_server: ServerFactory) -> Idp:
    state = Idp(jwks_document(RSA, EC, ED))

    async def jwks(request: web.Request) -> web.Response:
        state.hits += 1
        if state.down:
            return web.Response(status=503)
        return web.Response(body=state.document, content_type="application/json")

    app = web.Application()
    app.router.add_get("/jwks.json", jwks)
    state.server = await aiohttp_server(app)
    return state


def _settings(pacs: Pacs, tmp_path: Path, jwks_url: str, **auth: Any) -> Any:
    return settings_from_mapping(
        {
            "sites": [{"id": "main", "url": pacs.dicomweb_root}],
            "server": {"cors_origins": [VIEWER]},
            "state": {"sqlite": str(tmp_path / "state.sqlite3")},
            "auth": {
                "jwks_url": jwks_url,
                "issuer": ISSUER,
                "audience": AUDIENCE,
                "jwks_min_refresh_seconds": 0.5,
                **auth,
            },
        },
        {},
    )


@pytest.fixture
async def client(
    aiohttp_client: ClientFactory, pacs: Pacs, idp: Idp, tmp_path: Path
) -> TestClient[Any, Any]:
    return await aiohttp_client(create_app(_settings(pacs, tmp_path, idp.url)))


def _bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def good_token(key: SigningKey = RSA, **extra: Any) -> str:
    return key.sign(claims(**extra))


# ---------------------------------------------------------------- the routes


@dataclass(frozen=True)
class Route:
    name: str
    path: str
    form: str  # "dicomweb", "fhir" or "vendor": the body of its errors


@pytest.fixture
async def routes(client: TestClient[Any, Any], pacs: Pacs) -> list[Route]:
    """One route of each kind, with real UIDs and ids (found with a valid token)."""
    study = pacs.manifest["core"]["studies"][0]
    series = study["series"][0]
    instance = (
        f"/dicom-web/studies/{study['study_uid']}/series/{series['uid']}"
        f"/instances/{series['instances'][0]}"
    )
    found = await client.get(
        "/fhir/ImagingStudy?patient.identifier=|456789123&modality=MR",
        headers=_bearer(good_token()),
    )
    assert found.status == 200, await found.text()
    resource_id = (await found.json())["entry"][0]["resource"]["id"]
    return [
        Route("qido", f"/dicom-web/studies?StudyInstanceUID={study['study_uid']}", "dicomweb"),
        Route("wado", instance, "dicomweb"),
        Route("wado-site", f"/site/main{instance}/metadata", "dicomweb"),
        Route("fhir-search", "/fhir/ImagingStudy?patient.identifier=|456789123", "fhir"),
        Route("fhir-read", f"/fhir/ImagingStudy/{resource_id}", "fhir"),
        Route("vendor", f"/site/main/fhir/imaging-study/{resource_id}", "vendor"),
    ]


def _invalid(description: str) -> str:
    return f'{REALM}, error="invalid_token", error_description="{description}"'


def _now() -> int:
    return int(time.time())


# (case, Authorization header value or None, WWW-Authenticate expected)
REFUSED: list[tuple[str, Callable[[], str | None], str]] = [
    ("no token", lambda: None, REALM),
    ("another scheme", lambda: "Basic dXNlcjpwYXNz", REALM),
    ("bearer, no token", lambda: "Bearer", _invalid("malformed Authorization header")),
    ("bearer, two words", lambda: "Bearer a b", _invalid("malformed Authorization header")),
    ("not a JWT", lambda: "Bearer abc", _invalid("malformed token")),
    ("bad base64", lambda: "Bearer !!!.e30.AAAA", _invalid("malformed Authorization header")),
    ("bad JSON", lambda: "Bearer eyJ4.e30.AAAA", _invalid("malformed token")),
    (
        "expired",
        lambda: f"Bearer {good_token(exp=_now() - 300)}",
        _invalid("the token has expired"),
    ),
    (
        "not yet valid",
        lambda: f"Bearer {good_token(nbf=_now() + 300)}",
        _invalid("the token is not valid yet"),
    ),
    (
        "wrong issuer",
        lambda: f"Bearer {good_token(iss='https://evil.example')}",
        _invalid("the token is from another issuer"),
    ),
    (
        "wrong audience",
        lambda: f"Bearer {good_token(aud='https://other.example')}",
        _invalid("the token is meant for another audience"),
    ),
    (
        "bad signature",
        lambda: f"Bearer {good_token(FORGER)}",
        _invalid("the token's signature does not verify"),
    ),
    (
        "alg none",
        lambda: f"Bearer {alg_none(claims(), RSA.kid)}",
        _invalid("the token's signing algorithm is not allowed"),
    ),
    (
        "HMAC confusion",
        lambda: f"Bearer {hs256_with_public_key(RSA, claims())}",
        _invalid("the token's signing algorithm is not allowed"),
    ),
    (
        "unknown kid",
        lambda: f"Bearer {RSA.sign(claims(), kid='not-a-key')}",
        _invalid("the token's key id is unknown"),
    ),
    (
        "no exp",
        lambda: f"Bearer {good_token(exp=None)}",
        _invalid("the token has no 'exp' claim"),
    ),
]


async def _check_refusal(
    client: TestClient[Any, Any],
    route: Route,
    headers: dict[str, str],
    status: int,
    challenge: str,
) -> None:
    response = await client.get(route.path, headers=headers)
    text = await response.text()
    assert response.status == status, (route.name, response.status, text)
    assert response.headers["WWW-Authenticate"] == challenge, route.name
    assert "Traceback" not in text and "127.0.0.1" not in text
    body = await response.json(content_type=None)
    message = "Unauthorized" if status == 401 else "Forbidden"
    if route.form == "vendor":
        assert response.headers["Content-Type"].startswith("application/json")
        assert body == {"message": message, "statusCode": status}
    elif route.form == "fhir":
        assert response.headers["Content-Type"].startswith("application/fhir+json")
        OperationOutcome.model_validate(body)
        (issue,) = body["issue"]
        assert issue["severity"] == "error"
        assert issue["code"] == ("login" if status == 401 else "forbidden")
    else:
        assert response.headers["Content-Type"].startswith("application/json")
        assert body["status"] == status and body["message"] == message
        assert body["error"] == ("unauthorized" if status == 401 else "forbidden")


@pytest.mark.parametrize(
    ("header", "challenge"), [(h, c) for _, h, c in REFUSED], ids=[n for n, _, _ in REFUSED]
)
async def test_refusals_on_every_kind_of_route(
    client: TestClient[Any, Any],
    routes: list[Route],
    header: Callable[[], str | None],
    challenge: str,
) -> None:
    value = header()
    headers = {} if value is None else {"Authorization": value}
    for route in routes:
        await _check_refusal(client, route, headers, 401, challenge)


async def test_missing_scope_is_403_on_every_kind_of_route(
    client: TestClient[Any, Any], routes: list[Route]
) -> None:
    challenge = (
        f'{REALM}, error="insufficient_scope", '
        'error_description="the token lacks the scope this interaction needs", '
        f'scope="{SCOPE}"'
    )
    for scope in ("openid", "system/Patient.rs", "user/ImagingStudy.rs", "system/ImagingStudy.r"):
        headers = _bearer(good_token(scope=scope))
        for route in routes:
            await _check_refusal(client, route, headers, 403, challenge)


# web/streaming.py stores its outcome under a str request key, which aiohttp 3.14 warns about
# (and filterwarnings = error turns into a failed retrieve in-process).
@pytest.mark.filterwarnings("ignore::aiohttp.web_exceptions.NotAppKeyWarning")
@pytest.mark.parametrize("key", [RSA, EC, ED], ids=["RS256", "ES256", "EdDSA"])
async def test_valid_tokens_pass_on_every_kind_of_route(
    client: TestClient[Any, Any], routes: list[Route], key: SigningKey
) -> None:
    for token in (good_token(key), good_token(key, scope=None, scp=["system/*.read"])):
        for route in routes:
            response = await client.get(route.path, headers=_bearer(token))
            body = await response.read()
            assert response.status == 200, (route.name, response.status, body[:300])
            assert "WWW-Authenticate" not in response.headers
    ps256 = RSA.sign(claims(), alg="PS256")
    response = await client.get(routes[0].path, headers=_bearer(ps256))
    assert response.status == 200


async def test_head_and_other_interactions_need_their_scope(
    client: TestClient[Any, Any], routes: list[Route]
) -> None:
    wado = next(r for r in routes if r.name == "wado")
    head = await client.head(wado.path)
    assert head.status == 401 and head.headers["WWW-Authenticate"] == REALM
    token = _bearer(good_token())  # ImagingStudy.rs only
    create = await client.post("/fhir/ImagingSelection", json={}, headers=token)
    assert create.status == 403
    assert 'scope="system/ImagingSelection.c"' in create.headers["WWW-Authenticate"]
    patient = await client.get("/fhir/Patient/x", headers=token)
    assert (
        patient.status == 403 and 'scope="system/Patient.r"' in patient.headers["WWW-Authenticate"]
    )
    # A path no route serves: 401 without a token (no route map for strangers), 404 with one.
    unknown = await client.get("/dicom-web/no-such-thing")
    assert unknown.status == 401
    unknown = await client.get("/nothing-here", headers=_bearer(good_token(scope="openid")))
    assert unknown.status == 404


async def test_public_routes_need_no_token(client: TestClient[Any, Any]) -> None:
    for path in ("/health/live", "/health/ready", "/health/stats", "/fhir/metadata"):
        response = await client.get(path)
        assert response.status == 200, (path, await response.text())
    # The viewer is not configured here: its paths are 404 (not 401) all the same.
    assert (await client.get("/viewer/index.html")).status == 404


async def test_the_capability_statement_tells_clients_how_to_authenticate(
    client: TestClient[Any, Any],
) -> None:
    for accept in ("application/fhir+json", "application/fhir+json; fhirVersion=5.0"):
        answer = await client.get("/fhir/metadata", headers={"Accept": accept})
        statement = await answer.json()
        model = CapabilityStatementR5 if "5.0" in accept else CapabilityStatementR4
        model.model_validate(statement)
        security = statement["rest"][0]["security"]
        codes = {c["code"] for c in security["service"][0]["coding"]}
        assert codes == {"SMART-on-FHIR", "OAuth"}
        assert security["cors"] is True  # the viewer's origin is allowed
        assert ISSUER in security["description"]
        assert "system/ImagingStudy.rs" in security["description"]


async def test_cors_preflight_and_cors_headers_on_refusals(
    client: TestClient[Any, Any], routes: list[Route]
) -> None:
    qido = routes[0].path
    preflight = await client.options(
        qido,
        headers={
            "Origin": VIEWER,
            "Access-Control-Request-Method": "GET",
            "Access-Control-Request-Headers": "authorization",
        },
    )
    assert preflight.status == 204
    assert preflight.headers["Access-Control-Allow-Origin"] == VIEWER
    refused = await client.get(qido, headers={"Origin": VIEWER})
    assert refused.status == 401
    assert refused.headers["Access-Control-Allow-Origin"] == VIEWER
    assert "WWW-Authenticate" in refused.headers["Access-Control-Expose-Headers"]


async def test_a_deployment_names_its_own_dicomweb_scope(
    aiohttp_client: ClientFactory, pacs: Pacs, idp: Idp, tmp_path: Path, routes: list[Route]
) -> None:
    settings = _settings(pacs, tmp_path, idp.url, dicomweb_scope="dicomweb/read")
    client = await aiohttp_client(create_app(settings))
    qido = routes[0].path
    refused = await client.get(qido, headers=_bearer(good_token()))
    assert refused.status == 403 and 'scope="dicomweb/read"' in refused.headers["WWW-Authenticate"]
    passed = await client.get(qido, headers=_bearer(good_token(scope="dicomweb/read")))
    assert passed.status == 200
    fhir = await client.get(routes[3].path, headers=_bearer(good_token(scope="dicomweb/read")))
    assert fhir.status == 403


# ---------------------------------------------------------------- the key set over time


async def test_rotated_keys_are_picked_up(
    client: TestClient[Any, Any], routes: list[Route], idp: Idp
) -> None:
    qido = routes[0].path
    assert (await client.get(qido, headers=_bearer(good_token()))).status == 200
    rotated = ec_key("rotated-2")
    idp.document = jwks_document(rotated)
    await asyncio.sleep(0.6)  # past jwks_min_refresh_seconds
    hits = idp.hits
    response = await client.get(qido, headers=_bearer(good_token(rotated)))
    assert response.status == 200, await response.text()
    assert idp.hits == hits + 1


async def test_a_flood_of_unknown_kids_does_not_hammer_the_idp(
    client: TestClient[Any, Any], routes: list[Route], idp: Idp
) -> None:
    qido = routes[0].path
    await asyncio.sleep(0.6)
    hits = idp.hits

    async def one() -> int:
        token = RSA.sign(claims(), kid=uuid.uuid4().hex)
        response = await client.get(qido, headers=_bearer(token))
        return response.status

    statuses = await asyncio.gather(*(one() for _ in range(40)))
    assert set(statuses) == {401}
    assert idp.hits - hits <= 1


async def test_cached_keys_keep_working_while_the_idp_is_down(
    client: TestClient[Any, Any], routes: list[Route], idp: Idp
) -> None:
    qido = routes[0].path
    assert (await client.get(qido, headers=_bearer(good_token(EC)))).status == 200
    idp.down = True
    await asyncio.sleep(0.6)
    unknown = await client.get(qido, headers=_bearer(rsa_key("new").sign(claims())))
    assert unknown.status == 401  # a refresh was tried, and failed
    assert idp.hits >= 2
    for key in (RSA, EC, ED):
        response = await client.get(qido, headers=_bearer(good_token(key)))
        assert response.status == 200, await response.text()
    assert idp.server is not None
    await idp.server.close()  # gone altogether
    await asyncio.sleep(0.6)
    assert (await client.get(qido, headers=_bearer(rsa_key("x").sign(claims())))).status == 401
    assert (await client.get(qido, headers=_bearer(good_token()))).status == 200


async def test_no_keys_at_all_refuses_every_token(
    aiohttp_client: ClientFactory, pacs: Pacs, tmp_path: Path
) -> None:
    nowhere = f"http://127.0.0.1:{free_port()}/jwks.json"
    client = await aiohttp_client(create_app(_settings(pacs, tmp_path, nowhere)))
    for _ in range(3):
        response = await client.get("/dicom-web/studies", headers=_bearer(good_token()))
        assert response.status == 401
        assert response.headers["WWW-Authenticate"] == _invalid(
            "no signing keys are available to check the token"
        )
    assert (await client.get("/health/live")).status == 200


# ---------------------------------------------------------------- start-up: safe by default


def _config(tmp_path: Path, pacs: Pacs, port: int, auth: str) -> Path:
    config = tmp_path / "gateway.toml"
    config.write_text(
        f'[server]\nhost = "0.0.0.0"\nport = {port}\n'
        f'[state]\nsqlite = "{tmp_path / "state.sqlite3"}"\n'
        f'[[sites]]\nid = "main"\nurl = "{pacs.dicomweb_root}"\n'
        f"[auth]\n{auth}\n"
    )
    return config


def test_a_public_address_without_keys_is_refused(pacs: Pacs, tmp_path: Path) -> None:
    port = free_port()
    flags = ["serve", "--pacs-dicomweb", pacs.dicomweb_root, "--host", "0.0.0.0"]
    refused = subprocess.run(
        [sys.executable, "-m", "ncpeh_dicomweb.cli", *flags, "--port", str(port)],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
    )
    assert refused.returncode == 2
    lines = [line for line in refused.stderr.splitlines() if "configuration error" in line]
    assert len(lines) == 1 and "'0.0.0.0' is not a loopback address" in lines[0]
    assert "Traceback" not in refused.stderr
    # The same file with no [auth] at all: refused too.
    config = _config(tmp_path, pacs, port, "")
    refused = subprocess.run(
        [sys.executable, "-m", "ncpeh_dicomweb.cli", "serve", "--config", str(config)],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
    )
    assert refused.returncode == 2 and "not a loopback address" in refused.stderr


@pytest.mark.parametrize("mode", ["keys", "switched off"])
def test_a_public_address_with_keys_or_auth_switched_off(
    pacs: Pacs, tmp_path: Path, mode: str
) -> None:
    port = free_port()
    if mode == "keys":
        jwks = tmp_path / "jwks.json"
        jwks.write_bytes(jwks_document(EC))
        auth = f'jwks_file = "{jwks}"\nissuer = "{ISSUER}"\naudience = "{AUDIENCE}"'
    else:
        auth = "enabled = false"
    config = _config(tmp_path, pacs, port, auth)
    log = tmp_path / "gateway.log"
    url = f"http://127.0.0.1:{port}"
    proc = start_gateway(config, log, url)
    try:
        studies = requests.get(f"{url}/dicom-web/studies?limit=1", timeout=30)
        if mode == "keys":
            assert studies.status_code == 401
            token = _bearer(good_token(EC))
            passed = requests.get(f"{url}/dicom-web/studies?limit=1", headers=token, timeout=30)
            assert passed.status_code == 200
        else:
            assert studies.status_code == 200
    finally:
        stop_gateway(proc, log)
    text = log.read_text()
    if mode == "switched off":
        assert "AUTHENTICATION IS SWITCHED OFF" in text
    else:
        assert "AUTHENTICATION" not in text and "NO AUTHENTICATION" not in text
