"""Opaque bearer tokens, checked by the IdP's token introspection endpoint (RFC 7662).

The gateway POSTs ``token=…&token_type_hint=access_token`` with its own client credentials
(HTTP Basic, RFC 7662 2.1) and trusts the answer only when it is ``"active": true`` and its
claims fit the policy the JWT path applies too: ``iss`` (when given) is the configured issuer,
``aud`` (when given) holds a configured audience, ``exp`` is not past and ``nbf`` not in the
future (within the leeway).

Each answer is remembered under a digest of the token (never the token itself): an active one
until the cache time or its ``exp``, whichever is first; an inactive one for a few seconds,
so a client retrying a revoked token does not reach the IdP each time. Concurrent requests
with one token share one introspection (single flight), and at most ``max_concurrent``
introspections are in flight, so a flood of made-up tokens queues here instead of hammering
the IdP. An IdP that fails (down, 5xx, not JSON, timeout) is :class:`IntrospectionUnavailable`,
which the gateway answers 503 with ``Retry-After``: the client's token may be good, so a 401
would make it throw the token away.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import logging
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Final
from urllib.parse import quote_plus

import aiohttp
import orjson

from .tokens import Principal, TokenError, TokenPolicy, principal_of

__all__ = [
    "IntrospectionClient",
    "IntrospectionSettings",
    "IntrospectionUnavailable",
    "check_introspected",
    "client_authorization",
]

log = logging.getLogger(__name__)

MAX_ANSWER_BYTES: Final = 64 * 1024  # an introspection answer is a few hundred bytes
INACTIVE_SECONDS: Final = 5.0  # how long a refusal is remembered
MAX_ENTRIES: Final = 10_000  # tokens remembered, least recently used dropped first


class IntrospectionUnavailable(Exception):
    """The introspection endpoint could not give an answer (the message says why)."""


@dataclass(frozen=True, slots=True)
class IntrospectionSettings:
    url: str
    client_id: str
    client_secret: str
    cache_seconds: float = 60.0
    timeout: float = 5.0
    max_concurrent: int = 8


def client_authorization(client_id: str, secret: str) -> str:
    """HTTP Basic credentials of an OAuth client (RFC 6749 2.3.1: each part form-encoded
    first, so a ``:`` in the id cannot shift the split)."""
    pair = f"{quote_plus(client_id)}:{quote_plus(secret)}".encode()
    return "Basic " + base64.b64encode(pair).decode("ascii")


def _audiences(claims: Mapping[str, Any]) -> tuple[str, ...] | None:
    aud = claims.get("aud")
    if aud is None:
        return None
    if isinstance(aud, str):
        return (aud,)
    if isinstance(aud, list) and all(isinstance(a, str) for a in aud):
        return tuple(aud)
    raise TokenError("malformed token claims")


def _number(claims: Mapping[str, Any], name: str) -> float | None:
    value = claims.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TokenError("malformed token claims")
    return float(value)


def check_introspected(answer: Any, policy: TokenPolicy, now: float) -> Principal:
    """The :class:`Principal` of an introspection answer (RFC 7662 2.2), or TokenError. Pure:
    the policy checks a JWT gets, applied to the claims the IdP returned."""
    if not isinstance(answer, dict):
        raise IntrospectionUnavailable("the introspection answer is not a JSON object")
    if answer.get("active") is not True:
        raise TokenError("the token is not active")
    issuer = answer.get("iss")
    if issuer is not None and issuer != policy.issuer:
        raise TokenError("the token is from another issuer")
    audiences = _audiences(answer)
    if audiences is not None and not set(audiences) & set(policy.audiences):
        raise TokenError("the token is meant for another audience")
    expires = _number(answer, "exp")
    if expires is not None and expires + policy.leeway < now:
        raise TokenError("the token has expired")
    not_before = _number(answer, "nbf")
    if not_before is not None and not_before - policy.leeway > now:
        raise TokenError("the token is not valid yet")
    if answer.get("token_type") not in (None, "access_token", "Bearer", "bearer"):
        raise TokenError("the token is not an access token")
    return principal_of({**answer, "iss": policy.issuer})


@dataclass(slots=True)
class _Entry:
    until: float  # monotonic
    principal: Principal | None
    refusal: str | None


class IntrospectionClient:
    """Checks opaque tokens at the IdP (see the module doc). ``close()`` on shutdown."""

    def __init__(
        self,
        settings: IntrospectionSettings,
        policy: TokenPolicy,
        *,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        self._settings = settings
        self._policy = policy
        self._clock = clock
        self._wall_clock = wall_clock
        self._cache: OrderedDict[bytes, _Entry] = OrderedDict()
        self._flights: dict[bytes, asyncio.Task[_Entry]] = {}
        self._slots = asyncio.Semaphore(settings.max_concurrent)
        self._session: aiohttp.ClientSession | None = None
        self.requests = 0  # introspections sent, for stats and tests

    async def close(self) -> None:
        for flight in list(self._flights.values()):
            flight.cancel()
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def verify(self, token: str) -> Principal:
        """The token's :class:`Principal`; TokenError if the IdP says it is not good for us,
        IntrospectionUnavailable if the IdP cannot say."""
        key = hashlib.sha256(token.encode("utf-8", "surrogateescape")).digest()
        entry = self._cached(key)
        if entry is None:
            flight = self._flights.get(key)
            if flight is None:
                # A task, so a client hanging up does not cancel what others with the same
                # token wait for; the shield keeps each waiter's cancellation its own.
                flight = asyncio.create_task(self._introspect(token))
                self._flights[key] = flight
                flight.add_done_callback(lambda done: self._landed(key, done))
            entry = await asyncio.shield(flight)
        if entry.principal is None:
            raise TokenError(entry.refusal or "invalid token")
        return entry.principal

    def _landed(self, key: bytes, flight: asyncio.Task[_Entry]) -> None:
        del self._flights[key]
        if not flight.cancelled() and flight.exception() is None:
            self._remember(key, flight.result())

    def _cached(self, key: bytes) -> _Entry | None:
        entry = self._cache.get(key)
        if entry is None:
            return None
        if entry.until <= self._clock():
            del self._cache[key]
            return None
        self._cache.move_to_end(key)
        return entry

    def _remember(self, key: bytes, entry: _Entry) -> None:
        self._cache[key] = entry
        self._cache.move_to_end(key)
        while len(self._cache) > MAX_ENTRIES:
            self._cache.popitem(last=False)

    async def _introspect(self, token: str) -> _Entry:
        answer = await self._ask(token)
        now = self._clock()
        try:
            principal = check_introspected(answer, self._policy, self._wall_clock())
        except TokenError as exc:
            return _Entry(now + INACTIVE_SECONDS, None, str(exc))
        ttl = self._settings.cache_seconds
        expires = principal.claims.get("exp")
        if isinstance(expires, int | float) and not isinstance(expires, bool):
            ttl = min(ttl, max(0.0, float(expires) - self._wall_clock()))
        return _Entry(now + ttl, principal, None)

    async def _ask(self, token: str) -> Any:
        settings = self._settings
        if self._session is None:
            self._session = aiohttp.ClientSession(
                timeout=aiohttp.ClientTimeout(total=settings.timeout), trust_env=True
            )
        auth = client_authorization(settings.client_id, settings.client_secret)
        form = {"token": token, "token_type_hint": "access_token"}
        async with self._slots:
            self.requests += 1
            try:
                async with self._session.post(
                    settings.url,
                    data=form,
                    headers={"Accept": "application/json", "Authorization": auth},
                    allow_redirects=False,
                ) as response:
                    body = await response.content.read(MAX_ANSWER_BYTES + 1)
                    status = response.status
            except (aiohttp.ClientError, TimeoutError) as exc:
                log.warning("token introspection failed: %s", type(exc).__name__)
                raise IntrospectionUnavailable(
                    "the token introspection service is unreachable"
                ) from None
        if status != 200:
            log.warning("token introspection answered %d", status)
            raise IntrospectionUnavailable(f"the token introspection service answered {status}")
        if len(body) > MAX_ANSWER_BYTES:
            raise IntrospectionUnavailable("the token introspection answer is too large")
        try:
            return orjson.loads(body)
        except orjson.JSONDecodeError:
            raise IntrospectionUnavailable("the token introspection answer is not JSON") from None
