"""Bearer tokens: JWT access tokens (RFC 7519, RFC 9068) checked with PyJWT.

A token passes when, in this order:

1. it is one compact JWS of at most :data:`MAX_TOKEN_LENGTH` characters (three base64url
   parts);
2. its header's ``alg`` is in the configured allow-list, a subset of
   :data:`SUPPORTED_ALGORITHMS`: asymmetric signatures only, never ``none`` nor HMAC (an
   HS256 token "signed" with the IdP's public key must fail, and does: HS* is never allowed,
   and a key is only ever used for an algorithm its type fits, :meth:`Jwk.fits`); no ``crit``
   header (RFC 7515 4.1.11: we understand no extension);
3. a key of the JWK Set verifies the signature: the one its ``kid`` names (an unknown ``kid``
   refreshes the set, rate-limited), or without ``kid`` each key whose type fits, at most
   :data:`MAX_CANDIDATES`;
4. ``iss`` equals the configured issuer, ``aud`` holds one of the configured audiences, ``exp``
   is present and not past, ``nbf`` and ``iat`` not in the future, each within ``leeway``
   seconds of clock skew.

Anything else raises :class:`TokenError`, whose text is the ``error_description`` of the
401: fixed phrases, never an echo of the token's contents.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Final

import jwt

from .jwks import JwksSource

__all__ = [
    "DEFAULT_ALGORITHMS",
    "MAX_CANDIDATES",
    "MAX_TOKEN_LENGTH",
    "SUPPORTED_ALGORITHMS",
    "Principal",
    "TokenError",
    "TokenPolicy",
    "TokenVerifier",
    "looks_like_jwt",
    "principal_of",
]

#: The JWS algorithms a deployment may allow (RFC 7518 3.1, RFC 8037 3.1): asymmetric only.
SUPPORTED_ALGORITHMS: Final = (
    "RS256",
    "RS384",
    "RS512",
    "PS256",
    "PS384",
    "PS512",
    "ES256",
    "ES384",
    "ES512",
    "EdDSA",
)
DEFAULT_ALGORITHMS: Final = ("RS256", "PS256", "ES256", "EdDSA")
MAX_TOKEN_LENGTH: Final = 16384
MAX_CANDIDATES: Final = 8  # keys tried for a token without kid
_MAX_KID: Final = 256
_COMPACT = re.compile(r"[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]*")

# PyJWT's refusals → our error_description, most specific first (InvalidSignatureError is a
# DecodeError; every one is an InvalidTokenError).
_REASONS: Final[tuple[tuple[type[Exception], str], ...]] = (
    (jwt.ExpiredSignatureError, "the token has expired"),
    (jwt.ImmatureSignatureError, "the token is not valid yet"),
    (jwt.InvalidIssuerError, "the token is from another issuer"),
    (jwt.InvalidAudienceError, "the token is meant for another audience"),
    (jwt.InvalidSignatureError, "the token's signature does not verify"),
    (jwt.DecodeError, "malformed token"),
    (jwt.InvalidTokenError, "invalid token"),
    # PyJWT's int() of a claim that is a list or an object, or too big
    (TypeError, "malformed token claims"),
    (ValueError, "malformed token claims"),
    (OverflowError, "malformed token claims"),
)


class TokenError(Exception):
    """A refused token; the message is the ``error_description`` (RFC 6750 3)."""


@dataclass(frozen=True, slots=True)
class Principal:
    """Who a valid token speaks for."""

    subject: str | None  # "sub"
    client_id: str | None  # "client_id" (RFC 9068), else "azp"
    issuer: str
    scopes: frozenset[str]  # "scope" (space-separated, RFC 8693 4.2), else "scp" (a list)
    claims: Mapping[str, Any] = field(repr=False)  # all of them, read-only


@dataclass(frozen=True, slots=True)
class TokenPolicy:
    issuer: str
    audiences: tuple[str, ...]
    algorithms: tuple[str, ...] = DEFAULT_ALGORITHMS
    leeway: float = 60.0

    def __post_init__(self) -> None:
        unsupported = set(self.algorithms) - set(SUPPORTED_ALGORITHMS)
        if unsupported or not self.algorithms:
            raise ValueError(f"algorithms must be among {SUPPORTED_ALGORITHMS}")
        if not self.issuer or not self.audiences:
            raise ValueError("an issuer and at least one audience are required")


def _numeric_date(claims: Mapping[str, Any], name: str) -> None:
    value = claims.get(name)
    if value is not None and (isinstance(value, bool) or not isinstance(value, int | float)):
        raise TokenError("malformed token claims")


def _scopes(claims: Mapping[str, Any]) -> frozenset[str]:
    scope = claims.get("scope")
    if isinstance(scope, str):
        return frozenset(scope.split())
    scp = claims.get("scp")
    if isinstance(scp, str):
        return frozenset(scp.split())
    if isinstance(scp, list):
        return frozenset(s for s in scp if isinstance(s, str) and s)
    return frozenset()


def _text(claims: Mapping[str, Any], *names: str) -> str | None:
    for name in names:
        value = claims.get(name)
        if isinstance(value, str) and value:
            return value
    return None


def principal_of(claims: Mapping[str, Any]) -> Principal:
    """The :class:`Principal` of verified ``claims``."""
    for name in ("exp", "nbf", "iat"):
        _numeric_date(claims, name)
    return Principal(
        subject=_text(claims, "sub"),
        client_id=_text(claims, "client_id", "azp"),
        issuer=str(claims["iss"]),
        scopes=_scopes(claims),
        claims=MappingProxyType(dict(claims)),
    )


def looks_like_jwt(token: str) -> bool:
    """True if ``token`` has the form of a compact JWS (three base64url parts)."""
    return _COMPACT.fullmatch(token) is not None


def _reason(exc: Exception) -> str:
    if isinstance(exc, jwt.MissingRequiredClaimError):
        return f"the token has no {exc.claim!r} claim"
    return next(text for kind, text in _REASONS if isinstance(exc, kind))


class TokenVerifier:
    """Checks tokens against a policy and a JWK Set source (see the module doc)."""

    def __init__(self, policy: TokenPolicy, keys: JwksSource) -> None:
        self._policy = policy
        self._keys = keys

    async def verify(self, token: str) -> Principal:
        """The token's :class:`Principal`, or :class:`TokenError`."""
        policy = self._policy
        if len(token) > MAX_TOKEN_LENGTH:
            raise TokenError("the token is too long")
        if not _COMPACT.fullmatch(token):
            raise TokenError("malformed token")
        try:
            header = jwt.get_unverified_header(token)
        except jwt.InvalidTokenError:
            raise TokenError("malformed token") from None
        alg = header.get("alg")
        if not isinstance(alg, str) or alg not in policy.algorithms:
            raise TokenError("the token's signing algorithm is not allowed")
        if "crit" in header:
            raise TokenError("the token has critical header parameters")
        kid = header.get("kid")
        if kid is not None and (not isinstance(kid, str) or len(kid) > _MAX_KID):
            raise TokenError("malformed token")
        keys = await self._keys.keys(kid)
        if not keys.keys:
            raise TokenError("no signing keys are available to check the token")
        candidates = keys.candidates(kid, alg, MAX_CANDIDATES)
        if not candidates:
            if kid is not None and not keys.has(kid):
                raise TokenError("the token's key id is unknown")
            raise TokenError("no key fits the token's signing algorithm")
        failure: Exception | None = None
        for candidate in candidates:
            try:
                claims = jwt.decode(
                    token,
                    candidate.key,
                    algorithms=[alg],
                    audience=list(policy.audiences),
                    issuer=policy.issuer,
                    leeway=policy.leeway,
                    options={"require": ["exp", "iss", "aud"]},
                )
            except jwt.InvalidSignatureError as exc:
                failure = exc  # without kid: perhaps the next key
                continue
            except (jwt.InvalidTokenError, TypeError, ValueError, OverflowError) as exc:
                raise TokenError(_reason(exc)) from None
            return principal_of(claims)
        raise TokenError(_reason(failure or jwt.InvalidSignatureError()))
