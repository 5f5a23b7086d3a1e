"""The ``WWW-Authenticate`` challenge of a refused request (RFC 6750 3, pure).

* no credentials (no ``Authorization``, or another scheme): ``Bearer realm="..."`` alone, no
  error code (RFC 6750 3.1: "the resource server SHOULD NOT include an error code");
* a token that is malformed, expired, revoked or otherwise bad (401):
  ``error="invalid_token"`` with an ``error_description``;
* a valid token without the scope the interaction needs (403): ``error="insufficient_scope"``
  and ``scope`` naming what it needs.

Values are quoted strings (RFC 9110 11.2, 5.6.4): ``"`` and ``\\`` are escaped, control and
non-ASCII characters replaced by ``?`` (a header must never be split or forged by a value), and
long values cut.
"""

from __future__ import annotations

import re
from typing import Final

__all__ = ["DEFAULT_REALM", "challenge", "insufficient_scope", "invalid_token"]

DEFAULT_REALM: Final = "ncpeh-dicomweb"
_MAX_VALUE: Final = 200
_UNSAFE = re.compile(r"[^\x20-\x7e]")  # controls (CR, LF, NUL...), DEL and non-ASCII


def _quoted(value: str) -> str:
    value = _UNSAFE.sub("?", value[:_MAX_VALUE])
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def challenge(
    realm: str = DEFAULT_REALM,
    *,
    error: str | None = None,
    description: str | None = None,
    scope: str | None = None,
) -> str:
    """A ``Bearer`` challenge with its auth-params in RFC 6750's order."""
    params = [("realm", realm)]
    if error is not None:
        params.append(("error", error))
    if description:
        params.append(("error_description", description))
    if scope:
        params.append(("scope", scope))
    return "Bearer " + ", ".join(f"{name}={_quoted(value)}" for name, value in params)


def invalid_token(description: str, realm: str = DEFAULT_REALM) -> str:
    """The 401 challenge for a bad token (RFC 6750 3.1 ``invalid_token``)."""
    return challenge(realm, error="invalid_token", description=description)


def insufficient_scope(scope: str, realm: str = DEFAULT_REALM) -> str:
    """The 403 challenge for a token without ``scope`` (RFC 6750 3.1 ``insufficient_scope``)."""
    return challenge(
        realm,
        error="insufficient_scope",
        description="the token lacks the scope this interaction needs",
        scope=scope,
    )
