"""The identity provider's signing keys: a JWK Set (RFC 7517 5) from a file or a URL, cached.

Keys are fetched on first use, again when a token names a ``kid`` the cache does not hold
(the IdP rotated its keys) and when the cache is older than ``max_age`` (a key the IdP
withdrew stops being trusted). Fetches are rate-limited: at most one per ``min_refresh``
seconds whatever the tokens say, so a flood of made-up ``kid``\\ s costs the IdP nothing. A
fetch that fails (IdP down, timeout, too big, not a JWK Set) keeps the cached keys; with no
keys at all every token is refused (the caller answers 401), and the failure is logged once
per streak, not per request.

Only public signature keys are kept: RSA of 2048 bits or more, EC on P-256/P-384/P-521,
Ed25519 and Ed448 (OKP). Symmetric (``oct``) keys, private keys, keys whose ``use`` is not
``sig`` or whose ``key_ops`` lack ``verify`` are skipped: a JWK Set is public by nature, and a
public key must never become an HMAC secret.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import aiohttp
from cryptography.hazmat.primitives.asymmetric.ec import EllipticCurvePublicKey
from cryptography.hazmat.primitives.asymmetric.ed448 import Ed448PublicKey
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from cryptography.hazmat.primitives.asymmetric.rsa import RSAPublicKey
from jwt.algorithms import ECAlgorithm, OKPAlgorithm, RSAAlgorithm

__all__ = [
    "Fetch",
    "Jwk",
    "JwksError",
    "JwksSource",
    "KeySet",
    "PublicKey",
    "file_fetcher",
    "parse_jwks",
    "source_for",
    "url_fetcher",
]

log = logging.getLogger(__name__)

PublicKey = RSAPublicKey | EllipticCurvePublicKey | Ed25519PublicKey | Ed448PublicKey
Fetch = Callable[[], Awaitable[bytes]]

MAX_BYTES: Final = 1 << 20  # a JWK Set is a few KB; anything near this is not one
MAX_KEYS: Final = 64
_MIN_RSA_BITS: Final = 2048
# JWS "alg" (RFC 7518 3.1, RFC 8037 3.1) → what the key must be: its type, and for EC its curve.
_EC_CURVES: Final = {"ES256": "secp256r1", "ES384": "secp384r1", "ES512": "secp521r1"}
_RSA_ALGS: Final = frozenset({"RS256", "RS384", "RS512", "PS256", "PS384", "PS512"})
_PARSERS: Final[dict[str, Callable[[dict[str, Any]], Any]]] = {
    "RSA": RSAAlgorithm.from_jwk,
    "EC": ECAlgorithm.from_jwk,
    "OKP": OKPAlgorithm.from_jwk,
}


class JwksError(Exception):
    """The JWK Set could not be fetched or is not one."""


@dataclass(frozen=True, slots=True)
class Jwk:
    """One public signature key of the set."""

    kid: str | None
    alg: str | None  # the JWK's own "alg", if it names one: then only that algorithm
    key: PublicKey

    def fits(self, alg: str) -> bool:
        """True if a JWS signed with ``alg`` may be checked with this key (RFC 7518: RS*/PS*
        take RSA keys, ES256 a P-256 key..., EdDSA an OKP key); never a symmetric algorithm."""
        if self.alg is not None and self.alg != alg:
            return False
        if alg in _RSA_ALGS:
            return isinstance(self.key, RSAPublicKey)
        if alg in _EC_CURVES:
            return (
                isinstance(self.key, EllipticCurvePublicKey)
                and self.key.curve.name == _EC_CURVES[alg]
            )
        if alg == "EdDSA":
            return isinstance(self.key, Ed25519PublicKey | Ed448PublicKey)
        return False


@dataclass(frozen=True, slots=True)
class KeySet:
    keys: tuple[Jwk, ...] = ()

    def has(self, kid: str) -> bool:
        return any(k.kid == kid for k in self.keys)

    def candidates(self, kid: str | None, alg: str, limit: int) -> tuple[Jwk, ...]:
        """The keys that may have signed a token with this ``kid`` (None: any) and ``alg``,
        at most ``limit`` of them."""
        fitting = (k for k in self.keys if (kid is None or k.kid == kid) and k.fits(alg))
        return tuple(fitting)[:limit]


def _public_key(jwk: dict[str, Any]) -> PublicKey:
    kty = jwk.get("kty")
    parser = _PARSERS.get(kty) if isinstance(kty, str) else None
    if parser is None:
        raise JwksError(f"key type {kty!r} is not a public signature key type")
    if "d" in jwk:
        raise JwksError("a private key (published by mistake?)")
    if jwk.get("use", "sig") != "sig":
        raise JwksError("not a signature key (use)")
    ops = jwk.get("key_ops")
    if ops is not None and (not isinstance(ops, list) or "verify" not in ops):
        raise JwksError("not a verification key (key_ops)")
    try:
        key = parser(jwk)
    except Exception as exc:  # PyJWT and cryptography raise several kinds on bad parameters
        raise JwksError(f"bad key parameters ({type(exc).__name__})") from None
    if not isinstance(key, PublicKey):
        raise JwksError("not a public key")
    if isinstance(key, RSAPublicKey) and key.key_size < _MIN_RSA_BITS:
        raise JwksError(f"RSA key of {key.key_size} bits (at least {_MIN_RSA_BITS})")
    return key


def parse_jwks(data: bytes) -> tuple[KeySet, list[str]]:
    """A JWK Set document → its usable keys, and why each other key was skipped."""
    try:
        document = json.loads(data)
    except (ValueError, UnicodeDecodeError):
        raise JwksError("not JSON") from None
    entries = document.get("keys") if isinstance(document, dict) else None
    if not isinstance(entries, list):
        raise JwksError('not a JWK Set (no "keys" list)')
    keys: list[Jwk] = []
    skipped: list[str] = []
    for index, entry in enumerate(entries[:MAX_KEYS]):
        if not isinstance(entry, dict):
            skipped.append(f"key {index}: not an object")
            continue
        kid, alg = entry.get("kid"), entry.get("alg")
        name = f"key {kid!r}" if isinstance(kid, str) else f"key {index}"
        if (kid is not None and not isinstance(kid, str)) or (
            alg is not None and not isinstance(alg, str)
        ):
            skipped.append(f"{name}: kid and alg must be strings")
            continue
        try:
            keys.append(Jwk(kid, alg, _public_key(entry)))
        except JwksError as exc:
            skipped.append(f"{name}: {exc}")
    if len(entries) > MAX_KEYS:
        skipped.append(f"{len(entries) - MAX_KEYS} keys beyond the first {MAX_KEYS}")
    return KeySet(tuple(keys)), skipped


def _read_file(path: Path, max_bytes: int) -> bytes:
    with path.open("rb") as file:
        data = file.read(max_bytes + 1)
    if len(data) > max_bytes:
        raise JwksError(f"larger than {max_bytes} bytes")
    return data


def file_fetcher(path: str | Path, *, max_bytes: int = MAX_BYTES) -> Fetch:
    """Reads the JWK Set from a file (re-read on refresh: replacing the file rotates keys)."""
    where = Path(path)

    async def fetch() -> bytes:
        return await asyncio.to_thread(_read_file, where, max_bytes)

    return fetch


def url_fetcher(url: str, *, timeout: float = 5.0, max_bytes: int = MAX_BYTES) -> Fetch:
    """GETs the JWK Set from ``url``: 200 only, no redirects, ``timeout`` for the whole
    exchange, at most ``max_bytes`` (after any content decoding). A session per fetch: fetches
    are rare (rate-limited), and nothing is left open between them."""

    async def fetch() -> bytes:
        client_timeout = aiohttp.ClientTimeout(total=timeout)
        headers = {"Accept": "application/jwk-set+json, application/json"}
        async with (
            # trust_env: an IdP is often outside, behind the egress proxy (HTTPS_PROXY, NO_PROXY)
            aiohttp.ClientSession(timeout=client_timeout, trust_env=True) as session,
            session.get(url, headers=headers, allow_redirects=False) as response,
        ):
            if response.status != 200:
                raise JwksError(f"HTTP {response.status}")
            if response.content_length is not None and response.content_length > max_bytes:
                raise JwksError(f"larger than {max_bytes} bytes")
            data = bytearray()
            async for chunk in response.content.iter_chunked(65536):
                data += chunk
                if len(data) > max_bytes:
                    raise JwksError(f"larger than {max_bytes} bytes")
            return bytes(data)

    return fetch


def source_for(location: str, **options: Any) -> JwksSource:
    """A :class:`JwksSource` for an http(s) URL or a file path."""
    if location.startswith(("https://", "http://")):
        return JwksSource(url_fetcher(location), name=location, **options)
    return JwksSource(file_fetcher(location), name=location, **options)


class JwksSource:
    """The cached key set, refreshed on demand within the rate limit (see the module doc)."""

    def __init__(
        self,
        fetch: Fetch,
        *,
        name: str = "JWKS",
        min_refresh: float = 30.0,
        max_age: float = 600.0,
        timeout: float = 10.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._fetch = fetch
        self._name = name
        self._min_refresh = min_refresh
        self._max_age = max_age
        self._timeout = timeout
        self._clock = clock
        self._keys = KeySet()
        self._loaded_at: float | None = None
        self._attempted: float | None = None
        self._failing = False
        self._skipped: list[str] = []
        self._lock = asyncio.Lock()
        self.fetches = 0  # attempts so far (for stats and tests)

    @property
    def cached(self) -> KeySet:
        return self._keys

    def _may_fetch(self, now: float) -> bool:
        return self._attempted is None or now - self._attempted >= self._min_refresh

    async def keys(self, kid: str | None = None) -> KeySet:
        """The key set, refreshed first if it lacks ``kid`` or is old and the rate limit
        allows; whatever is cached when it does not."""
        now = self._clock()
        keys = self._keys
        usable = bool(keys.keys) and (kid is None or keys.has(kid))
        fresh = self._loaded_at is not None and now - self._loaded_at < self._max_age
        if usable and (fresh or self._lock.locked()):
            return keys  # an old set still serves while another request refreshes it
        if not self._may_fetch(now):
            if not self._lock.locked():
                return keys
            async with self._lock:  # a fetch is under way (the first, say): wait for its keys
                return self._keys
        async with self._lock:
            if self._may_fetch(self._clock()):  # not already done while we waited
                await self._refresh()
        return self._keys

    async def _refresh(self) -> None:
        self._attempted = self._clock()
        self.fetches += 1
        try:
            data = await asyncio.wait_for(self._fetch(), self._timeout)
            keys, skipped = parse_jwks(data)
            if not keys.keys:
                raise JwksError("no usable key" + (f" ({skipped[0]})" if skipped else ""))
        except Exception as exc:  # an IdP's failure must never become ours
            reason = str(exc) or type(exc).__name__
            if not self._failing:
                self._failing = True
                held = len(self._keys.keys)
                log.warning(
                    "signing keys from %s could not be fetched (%s); %s",
                    self._name,
                    reason,
                    f"keeping {held} cached keys" if held else "every token is refused",
                )
            return
        if skipped != self._skipped:
            for why in skipped:
                log.warning("signing keys from %s: skipped %s", self._name, why)
            self._skipped = skipped
        if self._failing or self._loaded_at is None or keys != self._keys:
            log.info("signing keys from %s: %d loaded", self._name, len(keys.keys))
        self._failing = False
        self._keys = keys
        self._loaded_at = self._clock()
