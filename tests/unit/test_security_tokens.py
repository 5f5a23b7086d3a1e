"""Bearer tokens checked with real keys made here (RSA 2048, EC P-256, Ed25519), signed with
PyJWT; the JWK Set source's cache and rate limit with a counting fake fetcher and clock.

The key helpers (:class:`SigningKey`, :func:`jwks_document`, :func:`claims`) are shared with
``tests/integration/test_auth.py``."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import logging
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import jwt
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from jwt.algorithms import ECAlgorithm, OKPAlgorithm, RSAAlgorithm

from ncpeh_dicomweb.security.jwks import (
    JwksError,
    JwksSource,
    file_fetcher,
    parse_jwks,
    url_fetcher,
)
from ncpeh_dicomweb.security.tokens import (
    MAX_CANDIDATES,
    Principal,
    TokenError,
    TokenPolicy,
    TokenVerifier,
)

ISSUER = "https://idp.example.org"
AUDIENCE = "https://ncp.example.org/imaging"
SCOPE = "system/ImagingStudy.rs"


# ---------------------------------------------------------------- shared helpers


@dataclass
class SigningKey:
    """A private key of the test IdP, its kid and the algorithm it signs with."""

    kid: str
    alg: str
    private: Any
    jwk_alg: bool = False  # publish "alg" in the JWK

    def public_jwk(self) -> dict[str, Any]:
        public = self.private.public_key()
        if isinstance(public, rsa.RSAPublicKey):
            jwk = RSAAlgorithm.to_jwk(public, as_dict=True)
        elif isinstance(public, ec.EllipticCurvePublicKey):
            jwk = ECAlgorithm.to_jwk(public, as_dict=True)
        else:
            jwk = OKPAlgorithm.to_jwk(public, as_dict=True)
        jwk = {**jwk, "kid": self.kid, "use": "sig"}
        if self.jwk_alg:
            jwk["alg"] = self.alg
        return jwk

    def public_pem(self) -> bytes:
        return bytes(
            self.private.public_key().public_bytes(
                serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
            )
        )

    def sign(
        self,
        payload: dict[str, Any],
        *,
        alg: str | None = None,
        kid: str | bool | None = True,
        headers: dict[str, Any] | None = None,
    ) -> str:
        header = dict(headers or {})
        if kid is True:
            header["kid"] = self.kid
        elif isinstance(kid, str):
            header["kid"] = kid
        return jwt.encode(payload, self.private, algorithm=alg or self.alg, headers=header)


def rsa_key(kid: str = "rsa-1") -> SigningKey:
    return SigningKey(kid, "RS256", rsa.generate_private_key(public_exponent=65537, key_size=2048))


def ec_key(kid: str = "ec-1") -> SigningKey:
    return SigningKey(kid, "ES256", ec.generate_private_key(ec.SECP256R1()))


def ed_key(kid: str = "ed-1") -> SigningKey:
    return SigningKey(kid, "EdDSA", ed25519.Ed25519PrivateKey.generate())


def jwks_document(*keys: SigningKey) -> bytes:
    return json.dumps({"keys": [k.public_jwk() for k in keys]}).encode()


def claims(**extra: Any) -> dict[str, Any]:
    now = int(time.time())
    base = {
        "iss": ISSUER,
        "aud": AUDIENCE,
        "sub": "gateway-client",
        "client_id": "ncp-client",
        "scope": f"openid {SCOPE}",
        "iat": now,
        "exp": now + 300,
    }
    base.update(extra)
    return {k: v for k, v in base.items() if v is not None}


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def hs256_with_public_key(key: SigningKey, payload: dict[str, Any]) -> str:
    """The algorithm-confusion attack: HS256 "signed" with the IdP's public key PEM as the
    HMAC secret (PyJWT refuses to make one, so it is made by hand)."""
    header = _b64(json.dumps({"alg": "HS256", "typ": "JWT", "kid": key.kid}).encode())
    body = _b64(json.dumps(payload).encode())
    mac = hmac.new(key.public_pem(), f"{header}.{body}".encode(), hashlib.sha256).digest()
    return f"{header}.{body}.{_b64(mac)}"


def with_header(token: str, header: dict[str, Any]) -> str:
    """``token`` with its header replaced (its signature no longer matches)."""
    _, body, signature = token.split(".")
    return f"{_b64(json.dumps(header).encode())}.{body}.{signature}"


def signed_raw(payload: bytes) -> str:
    """A correctly signed JWS whose payload is ``payload`` as given (JSON or not)."""
    return jwt.PyJWS().encode(payload, RSA.private, algorithm="RS256", headers={"kid": RSA.kid})


def alg_none(payload: dict[str, Any], kid: str = "rsa-1") -> str:
    header = _b64(json.dumps({"alg": "none", "typ": "JWT", "kid": kid}).encode())
    return f"{header}.{_b64(json.dumps(payload).encode())}."


# ---------------------------------------------------------------- fixtures

RSA = rsa_key()
EC = ec_key()
ED = ed_key()
OTHER_RSA = rsa_key("rsa-1")  # same kid as RSA, another key: a forged signature


@dataclass
class FakeIdp:
    """A counting fetcher whose document can change or fail, and a clock moved by hand."""

    document: bytes = field(default_factory=lambda: jwks_document(RSA, EC, ED))
    down: bool = False
    fetches: int = 0
    now: float = 1000.0

    async def fetch(self) -> bytes:
        self.fetches += 1
        await asyncio.sleep(0)
        if self.down:
            raise ConnectionRefusedError("IdP down")
        return self.document

    def clock(self) -> float:
        return self.now


def _verifier(idp: FakeIdp, **policy: Any) -> tuple[TokenVerifier, JwksSource]:
    source = JwksSource(idp.fetch, min_refresh=30, max_age=600, clock=idp.clock)
    settings: dict[str, Any] = {"issuer": ISSUER, "audiences": (AUDIENCE,), **policy}
    return TokenVerifier(TokenPolicy(**settings), source), source


@pytest.fixture
def idp() -> FakeIdp:
    return FakeIdp()


async def _refused(verifier: TokenVerifier, token: str) -> str:
    with pytest.raises(TokenError) as caught:
        await verifier.verify(token)
    return str(caught.value)


# ---------------------------------------------------------------- valid tokens


@pytest.mark.parametrize(
    ("key", "alg"),
    [(RSA, "RS256"), (RSA, "PS256"), (EC, "ES256"), (ED, "EdDSA")],
)
async def test_valid_tokens(idp: FakeIdp, key: SigningKey, alg: str) -> None:
    verifier, _ = _verifier(idp)
    principal = await verifier.verify(key.sign(claims(), alg=alg))
    assert isinstance(principal, Principal)
    assert principal.subject == "gateway-client"
    assert principal.client_id == "ncp-client"
    assert principal.issuer == ISSUER
    assert principal.scopes == {"openid", SCOPE}
    assert principal.claims["aud"] == AUDIENCE
    assert "claims" not in repr(principal)


async def test_scopes_from_scp_and_client_from_azp(idp: FakeIdp) -> None:
    verifier, _ = _verifier(idp)
    token = RSA.sign(claims(scope=None, client_id=None, azp="azp-client", scp=[SCOPE, "x", 5]))
    principal = await verifier.verify(token)
    assert principal.scopes == {SCOPE, "x"} and principal.client_id == "azp-client"
    bare = await verifier.verify(RSA.sign(claims(scope=None, sub=None, client_id=None)))
    assert (bare.scopes, bare.subject, bare.client_id) == (frozenset(), None, None)


async def test_audience_list_and_configured_list(idp: FakeIdp) -> None:
    verifier, _ = _verifier(idp, audiences=("other", AUDIENCE))
    await verifier.verify(RSA.sign(claims(aud=["someone", AUDIENCE])))
    await verifier.verify(RSA.sign(claims(aud="other")))


async def test_clock_skew_within_leeway_passes(idp: FakeIdp) -> None:
    verifier, _ = _verifier(idp, leeway=60)
    now = int(time.time())
    await verifier.verify(RSA.sign(claims(exp=now - 30)))
    await verifier.verify(RSA.sign(claims(nbf=now + 30, iat=now + 30)))


# ---------------------------------------------------------------- refused tokens


def _now() -> int:
    return int(time.time())


REFUSALS: list[tuple[str, Callable[[], str], str]] = [
    ("expired", lambda: RSA.sign(claims(exp=_now() - 120)), "the token has expired"),
    ("not yet valid", lambda: RSA.sign(claims(nbf=_now() + 300)), "the token is not valid yet"),
    ("issued in future", lambda: RSA.sign(claims(iat=_now() + 300)), "the token is not valid yet"),
    ("wrong iss", lambda: RSA.sign(claims(iss="https://evil.example")), "another issuer"),
    ("iss prefix", lambda: RSA.sign(claims(iss="https://idp.example")), "another issuer"),
    ("iss list", lambda: RSA.sign(claims(iss=[ISSUER])), "another issuer"),
    ("wrong aud", lambda: RSA.sign(claims(aud="https://other.example")), "another audience"),
    ("aud prefix", lambda: RSA.sign(claims(aud=AUDIENCE[:-1])), "another audience"),
    ("no exp", lambda: RSA.sign(claims(exp=None)), "the token has no 'exp' claim"),
    ("no iss", lambda: RSA.sign(claims(iss=None)), "the token has no 'iss' claim"),
    ("no aud", lambda: RSA.sign(claims(aud=None)), "the token has no 'aud' claim"),
    ("exp a list", lambda: RSA.sign(claims(exp=[1])), "malformed token claims"),
    ("exp a string", lambda: RSA.sign(claims(exp=str(_now() + 300))), "malformed token claims"),
    ("exp too big", lambda: RSA.sign(claims(exp=1e400)), "malformed token"),
    ("bad signature", lambda: OTHER_RSA.sign(claims()), "signature does not verify"),
    ("alg none", lambda: alg_none(claims()), "signing algorithm is not allowed"),
    ("HMAC confusion", lambda: hs256_with_public_key(RSA, claims()), "algorithm is not allowed"),
    ("RS512 not allowed", lambda: RSA.sign(claims(), alg="RS512"), "algorithm is not allowed"),
    ("unknown kid", lambda: RSA.sign(claims(), kid="nobody"), "key id is unknown"),
    ("RSA kid, ES256", lambda: EC.sign(claims(), kid=RSA.kid), "no key fits"),
    ("EC kid, RS256", lambda: RSA.sign(claims(), kid=EC.kid), "no key fits"),
    ("Ed kid, ES256", lambda: EC.sign(claims(), kid=ED.kid), "no key fits"),
    ("crit", lambda: RSA.sign(claims(), headers={"crit": ["exp"]}), "critical header"),
    ("kid a number", lambda: with_header(RSA.sign(claims()), {"alg": "RS256", "kid": 7}), "malf"),
    ("kid too long", lambda: RSA.sign(claims(), kid="k" * 300), "malformed token"),
    ("not 3 parts", lambda: "abc.def", "malformed token"),
    ("4 parts", lambda: RSA.sign(claims()) + ".x", "malformed token"),
    ("empty", lambda: "", "malformed token"),
    ("bad base64", lambda: "!!!." + RSA.sign(claims()).split(".", 1)[1], "malformed token"),
    ("header not JSON", lambda: f"{_b64(b'{x')}.{_b64(b'{}')}.AAAA", "malformed token"),
    ("header not object", lambda: f"{_b64(b'[1]')}.{_b64(b'{}')}.AAAA", "malformed token"),
    ("payload not JSON", lambda: signed_raw(b"not json"), "malformed token"),
    ("payload a list", lambda: signed_raw(b"[1, 2]"), "malformed token"),
    ("huge", lambda: "a" * 20000 + ".b.c", "the token is too long"),
    ("tampered payload", lambda: _tampered_payload(json.dumps(claims(sub="x")).encode()), "sig"),
]


def _tampered_payload(payload: bytes) -> str:
    """A real token whose payload was swapped after signing."""
    header, _, signature = RSA.sign(claims()).split(".")
    return f"{header}.{_b64(payload)}.{signature}"


@pytest.mark.parametrize(
    ("make", "reason"), [(m, r) for _, m, r in REFUSALS], ids=[n for n, _, _ in REFUSALS]
)
async def test_refused_tokens(idp: FakeIdp, make: Callable[[], str], reason: str) -> None:
    verifier, _ = _verifier(idp)
    assert reason in await _refused(verifier, make())


async def test_reasons_never_echo_the_token(idp: FakeIdp) -> None:
    verifier, _ = _verifier(idp)
    marker = "SECRET-MARKER"
    for token in (
        RSA.sign(claims(iss=marker)),
        RSA.sign(claims(), kid=marker),
        with_header(RSA.sign(claims()), {"alg": marker, "kid": RSA.kid}),
        marker,
    ):
        with pytest.raises(TokenError) as caught:
            await verifier.verify(token)
        assert marker not in str(caught.value)


def test_policy_refuses_symmetric_and_none() -> None:
    for algorithms in (("HS256",), ("none",), ("RS256", "HS512"), ()):
        with pytest.raises(ValueError, match="algorithms"):
            TokenPolicy(ISSUER, (AUDIENCE,), algorithms)
    with pytest.raises(ValueError, match="issuer"):
        TokenPolicy("", (AUDIENCE,))
    with pytest.raises(ValueError, match="audience"):
        TokenPolicy(ISSUER, ())


async def test_allow_list_is_configurable(idp: FakeIdp) -> None:
    verifier, _ = _verifier(idp, algorithms=("ES256",))
    await verifier.verify(EC.sign(claims()))
    assert "not allowed" in await _refused(verifier, RSA.sign(claims()))


async def test_a_jwk_alg_pins_the_algorithm(idp: FakeIdp) -> None:
    pinned = SigningKey("pinned", "RS256", RSA.private, jwk_alg=True)
    idp.document = jwks_document(pinned)
    verifier, _ = _verifier(idp)
    await verifier.verify(pinned.sign(claims()))
    assert "no key fits" in await _refused(verifier, pinned.sign(claims(), alg="PS256"))


# ---------------------------------------------------------------- tokens without kid


async def test_without_kid_each_fitting_key_is_tried(idp: FakeIdp) -> None:
    second = rsa_key("rsa-2")
    idp.document = jwks_document(RSA, EC, second)
    verifier, _ = _verifier(idp)
    principal = await verifier.verify(second.sign(claims(), kid=None))
    assert principal.subject == "gateway-client"
    await verifier.verify(EC.sign(claims(), kid=None))
    assert "signature" in await _refused(verifier, OTHER_RSA.sign(claims(), kid=None))


async def test_without_kid_the_tries_are_bounded(idp: FakeIdp) -> None:
    keys = [ec_key(f"ec-{i}") for i in range(MAX_CANDIDATES + 2)]
    idp.document = jwks_document(*keys)
    verifier, _ = _verifier(idp)
    await verifier.verify(keys[MAX_CANDIDATES - 1].sign(claims(), kid=None))
    assert "signature" in await _refused(verifier, keys[-1].sign(claims(), kid=None))
    await verifier.verify(keys[-1].sign(claims()))  # with its kid it is found


# ---------------------------------------------------------------- the JWK Set source


async def test_unknown_kids_refresh_at_most_once_per_interval(idp: FakeIdp) -> None:
    verifier, source = _verifier(idp)
    await verifier.verify(RSA.sign(claims()))
    assert idp.fetches == 1
    # A flood of made-up kids, one after another and all at once: no fetch within 30 s.
    for _ in range(50):
        await _refused(verifier, RSA.sign(claims(), kid=uuid.uuid4().hex))
    await asyncio.gather(
        *(_refused(verifier, RSA.sign(claims(), kid=uuid.uuid4().hex)) for _ in range(50))
    )
    assert idp.fetches == 1
    # After the interval: one fetch, however many unknown kids arrive together.
    idp.now += 31
    await asyncio.gather(
        *(_refused(verifier, RSA.sign(claims(), kid=uuid.uuid4().hex)) for _ in range(50))
    )
    assert idp.fetches == 2 and source.fetches == 2
    await verifier.verify(RSA.sign(claims()))  # known kids never fetch
    assert idp.fetches == 2


async def test_rotated_keys_are_picked_up(idp: FakeIdp) -> None:
    verifier, _ = _verifier(idp)
    await verifier.verify(RSA.sign(claims()))
    new = ec_key("ec-rotated")
    idp.document = jwks_document(new)  # the IdP rotated: old keys withdrawn
    assert "unknown" in await _refused(verifier, new.sign(claims()))  # within the interval
    idp.now += 30
    await verifier.verify(new.sign(claims()))
    assert idp.fetches == 2
    # The withdrawn key now fails too (it was dropped with the refresh).
    assert "unknown" in await _refused(verifier, RSA.sign(claims()))


async def test_old_keys_are_refreshed_and_kept_while_the_idp_is_down(
    idp: FakeIdp, caplog: pytest.LogCaptureFixture
) -> None:
    verifier, source = _verifier(idp)
    await verifier.verify(RSA.sign(claims()))
    idp.down = True
    caplog.set_level(logging.WARNING, logger="ncpeh_dicomweb.security.jwks")
    for _ in range(5):
        idp.now += 601  # past max_age: each time a refresh is due, tried, and fails
        await verifier.verify(RSA.sign(claims()))  # the cached key keeps working
        assert "unknown" in await _refused(verifier, rsa_key("new").sign(claims()))
    assert idp.fetches == 6
    warnings = [r for r in caplog.records if "could not be fetched" in r.getMessage()]
    assert len(warnings) == 1 and "keeping 3 cached keys" in warnings[0].getMessage()
    idp.down = False
    idp.now += 31
    await verifier.verify(RSA.sign(claims()))
    assert idp.fetches == 7 and len(source.cached.keys) == 3


async def test_no_keys_at_all_refuses_every_token_and_logs_once(
    idp: FakeIdp, caplog: pytest.LogCaptureFixture
) -> None:
    idp.down = True
    verifier, _ = _verifier(idp)
    caplog.set_level(logging.WARNING, logger="ncpeh_dicomweb.security.jwks")
    for _ in range(3):
        for _ in range(10):
            assert "no signing keys" in await _refused(verifier, RSA.sign(claims()))
        idp.now += 31
    assert idp.fetches == 3
    warnings = [r for r in caplog.records if "could not be fetched" in r.getMessage()]
    assert len(warnings) == 1 and "every token is refused" in warnings[0].getMessage()
    idp.down = False
    await verifier.verify(RSA.sign(claims()))


async def test_a_set_without_usable_keys_keeps_the_cache(idp: FakeIdp) -> None:
    verifier, _ = _verifier(idp)
    await verifier.verify(RSA.sign(claims()))
    idp.document = b'{"keys": []}'
    idp.now += 601
    await verifier.verify(RSA.sign(claims()))
    assert idp.fetches == 2


async def test_a_hanging_fetch_times_out() -> None:
    async def hang() -> bytes:
        await asyncio.sleep(60)
        return b""

    source = JwksSource(hang, timeout=0.1)
    assert (await source.keys("x")).keys == ()
    assert source.fetches == 1


# ---------------------------------------------------------------- parsing and fetching


def test_parse_jwks_keeps_only_public_signature_keys() -> None:
    private_jwk = json.loads(RSAAlgorithm.to_jwk(RSA.private))
    small = rsa.generate_private_key(public_exponent=65537, key_size=1024)
    document = {
        "keys": [
            RSA.public_jwk(),
            EC.public_jwk(),
            ED.public_jwk(),
            {**private_jwk, "kid": "private"},
            {"kty": "oct", "k": _b64(b"secret"), "kid": "hmac"},
            {**RSA.public_jwk(), "kid": "enc", "use": "enc"},
            {**RSA.public_jwk(), "kid": "ops", "key_ops": ["encrypt"]},
            {**RSAAlgorithm.to_jwk(small.public_key(), as_dict=True), "kid": "small"},
            {"kty": "EC", "crv": "P-256", "x": "AA", "y": "AA", "kid": "broken"},
            {"kty": "OKP", "crv": "X25519", "x": _b64(b"x" * 32), "kid": "x25519"},
            {**RSA.public_jwk(), "kid": 5},
            "not an object",
        ]
    }
    keys, skipped = parse_jwks(json.dumps(document).encode())
    assert [k.kid for k in keys.keys] == ["rsa-1", "ec-1", "ed-1"]
    assert len(skipped) == 9
    text = "\n".join(skipped)
    for word in ("private", "hmac", "enc", "ops", "1024 bits", "broken", "x25519"):
        assert word in text


@pytest.mark.parametrize("data", [b"not json", b"[]", b'{"keys": {}}', b"\xff\xfe"])
def test_parse_jwks_refuses_what_is_not_a_set(data: bytes) -> None:
    with pytest.raises(JwksError):
        parse_jwks(data)


async def test_file_fetcher(tmp_path: Any) -> None:
    path = tmp_path / "jwks.json"
    path.write_bytes(jwks_document(RSA))
    assert await file_fetcher(path)() == jwks_document(RSA)
    with pytest.raises(JwksError, match="larger"):
        await file_fetcher(path, max_bytes=10)()


ServerFactory = Callable[..., Awaitable[TestServer]]


async def test_url_fetcher(aiohttp_server: ServerFactory) -> None:
    hits: list[str] = []

    async def serve(request: web.Request) -> web.StreamResponse:
        hits.append(request.path)
        name = request.match_info["name"]
        if name == "ok":
            return web.Response(body=jwks_document(RSA), content_type="application/json")
        if name == "big":
            return web.Response(body=b" " * 5000)
        if name == "chunked":
            response = web.StreamResponse()
            await response.prepare(request)
            for _ in range(10):
                await response.write(b" " * 1000)
            return response
        if name == "moved":
            raise web.HTTPFound("/jwks/ok")
        if name == "slow":
            await asyncio.sleep(5)
        return web.Response(status=500)

    app = web.Application()
    app.router.add_get("/jwks/{name}", serve)
    server = await aiohttp_server(app)
    base = f"http://127.0.0.1:{server.port}/jwks"
    assert await url_fetcher(f"{base}/ok")() == jwks_document(RSA)
    for name, error in (
        ("big", "larger"),
        ("chunked", "larger"),
        ("moved", "HTTP 302"),
        ("fail", "HTTP 500"),
    ):
        with pytest.raises(JwksError, match=error):
            await url_fetcher(f"{base}/{name}", max_bytes=4096)()
    with pytest.raises(TimeoutError):
        await url_fetcher(f"{base}/slow", timeout=0.2)()
    assert "/jwks/ok" in hits and hits.count("/jwks/ok") == 1  # the redirect was not followed


async def test_tokens_arriving_during_the_first_fetch_wait_for_its_keys() -> None:
    """Concurrent first requests (a gateway just started): each gets the keys the one fetch
    brings, none the empty set held before it (which refused them all as 401)."""
    key = rsa_key("first-load")
    released = asyncio.Event()

    async def slow() -> bytes:
        await released.wait()
        return jwks_document(key)

    source = JwksSource(slow, min_refresh=30)
    verifier = TokenVerifier(TokenPolicy(ISSUER, (AUDIENCE,)), source)
    token = key.sign(claims())
    checks = [asyncio.create_task(verifier.verify(token)) for _ in range(4)]
    await asyncio.sleep(0.05)
    released.set()
    principals = await asyncio.gather(*checks)
    assert [p.subject for p in principals] == ["gateway-client"] * 4
    assert source.fetches == 1
