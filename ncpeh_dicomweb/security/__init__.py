"""Who may read what: bearer tokens checked against the IdP's keys, and SMART scopes.

``jwks`` (the IdP's keys, cached and refreshed within a rate limit), ``tokens`` (JWT checks,
giving a :class:`Principal`), ``scopes`` (SMART scopes and the scope each interaction needs;
pure) and ``challenge`` (the ``WWW-Authenticate`` value; pure). The aiohttp side is
``web/auth.py``.
"""

from __future__ import annotations

from .challenge import challenge, insufficient_scope, invalid_token
from .jwks import JwksSource, KeySet, source_for
from .scopes import DEFAULT_SCOPES, Interaction, classify, satisfies
from .tokens import Principal, TokenError, TokenPolicy, TokenVerifier

__all__ = [
    "DEFAULT_SCOPES",
    "Interaction",
    "JwksSource",
    "KeySet",
    "Principal",
    "TokenError",
    "TokenPolicy",
    "TokenVerifier",
    "challenge",
    "classify",
    "insufficient_scope",
    "invalid_token",
    "satisfies",
    "source_for",
]
