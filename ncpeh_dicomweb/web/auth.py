"""Bearer-token authentication (RFC 6750) and SMART scopes on every route but the public ones.

Public: ``/health/*``, ``/metrics``, the viewer's files under ``/viewer/``, the FHIR
CapabilityStatement (``/fhir/metadata``: FHIR and SMART clients read it to discover the server,
and it holds no patient data) and CORS preflights. Everything else needs a valid token
(401 otherwise) carrying the scope of its interaction (403 otherwise); the token's
:class:`~ncpeh_dicomweb.security.Principal` is then at ``request[PRINCIPAL]``.

The middleware runs inside the error middleware, so a refusal is rendered as the route's
clients expect (our JSON on DICOMweb routes, an OperationOutcome on FHIR routes, the vendor
route's ``{"message", "statusCode"}``) with its ``WWW-Authenticate`` header; and inside the
CORS middleware, so preflights are answered first and refusals carry the CORS headers
(``on_response_prepare``). The interaction is classified from the matched route's template,
the same thing the router resolved, so no spelling of a path reaches a handler unclassified.
"""

from __future__ import annotations

import logging
import re
from typing import Final

from aiohttp import web
from aiohttp.typedefs import Handler, Middleware
from multidict import CIMultiDictProxy

from ..config import AuthSettings, Settings, check_auth
from ..errors import Forbidden, Unauthorized
from ..security.challenge import challenge, insufficient_scope, invalid_token
from ..security.jwks import source_for
from ..security.scopes import Interaction, classify, satisfies
from ..security.tokens import TokenError, TokenPolicy, TokenVerifier
from .keys import PRINCIPAL

__all__ = ["auth_middlewares", "bearer_token"]

log = logging.getLogger(__name__)

# RFC 6750 2.1: "Bearer" 1*SP b64token, b64token = 1*( ALPHA / DIGIT / "-" / "." / "_" / "~" /
# "+" / "/" ) *"="; the scheme is case-insensitive (RFC 9110 11.1).
_SCHEME = re.compile(r"bearer(?:\s|$)", re.IGNORECASE)
_B64TOKEN = re.compile(r"[A-Za-z0-9\-._~+/]+=*")
_UNAUTHORIZED: Final = "Unauthorized"  # the message: the vendor route's body says just this
_FORBIDDEN: Final = "Forbidden"


def bearer_token(headers: CIMultiDictProxy[str]) -> str | None:
    """The bearer token of a request; None if it has no credentials of that scheme (RFC 6750
    3.1: then the challenge carries no error code); TokenError if the header is malformed."""
    values = headers.getall("Authorization", [])
    if not values:
        return None
    if len(values) > 1:
        raise TokenError("more than one Authorization header")
    value = values[0].strip()
    if not _SCHEME.match(value):
        return None  # another scheme (Basic...): no bearer credentials
    token = value[len("bearer") :].strip()
    if not _B64TOKEN.fullmatch(token):
        raise TokenError("malformed Authorization header")
    return token


def _route_template(request: web.Request) -> str:
    """The matched route's template (``/dicom-web/studies/{study}``), else the path."""
    match = request.match_info
    resource = match.route.resource
    if match.http_exception is None and resource is not None:
        return resource.canonical
    return request.path


def auth_middlewares(settings: Settings) -> list[Middleware]:
    """The auth middleware, or none when authentication is off."""
    auth = settings.auth
    if not auth.active:
        return []
    check_auth(auth)  # settings made in code skip the loader: fail closed, never open
    assert auth.key_source is not None and auth.issuer is not None
    source = source_for(auth.key_source, min_refresh=auth.jwks_min_refresh_seconds)
    policy = TokenPolicy(auth.issuer, auth.audience, auth.algorithms, auth.leeway_seconds)
    return [_middleware(TokenVerifier(policy, source), auth)]


def _middleware(verifier: TokenVerifier, auth: AuthSettings) -> Middleware:
    @web.middleware
    async def auth_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        if request.method == "OPTIONS" and "Access-Control-Request-Method" in request.headers:
            return await handler(request)  # a CORS preflight: browsers send no credentials
        interaction = classify(request.method, _route_template(request))
        if interaction is Interaction.PUBLIC:
            return await handler(request)
        try:
            token = bearer_token(request.headers)
            if token is None:
                raise Unauthorized(
                    _UNAUTHORIZED,
                    detail={"reason": "a bearer token is required"},
                    headers={"WWW-Authenticate": challenge()},
                )
            principal = await verifier.verify(token)
        except TokenError as exc:
            log.info("%s %s: token refused: %s", request.method, request.path, exc)
            raise Unauthorized(
                _UNAUTHORIZED,
                detail={"reason": str(exc)},
                headers={"WWW-Authenticate": invalid_token(str(exc))},
            ) from None
        request[PRINCIPAL] = principal  # set before the scope check: audit records refusals too
        scope = auth.required_scope(interaction)
        if scope is not None and not satisfies(principal.scopes, scope):
            log.info("%s %s: token lacks scope %s", request.method, request.path, scope)
            raise Forbidden(
                _FORBIDDEN,
                detail={"reason": "the token lacks a scope", "scope": scope},
                headers={"WWW-Authenticate": insufficient_scope(scope)},
            )
        return await handler(request)

    return auth_middleware
