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

A token bound to one patient (``[auth] patient_claim`` / ``patient_identifier_claim``,
:mod:`ncpeh_dicomweb.security.patient`) gets its :class:`PatientBinding` at
``request[PATIENT_BINDING]``; a patient claim that cannot be read is a 401 ``invalid_token``.
The handlers apply it through the helpers below: :func:`bound_search` (a QIDO narrowed to the
patient and filtered), :func:`bound_qido` (the same for the FHIR handlers' own queries) and
:func:`patient_study` (a study's patient checked before anything of it is read; for a bound
token every 404 inside is one and the same, so another patient's study, series or instance
looks exactly like one that does not exist).
"""

from __future__ import annotations

import logging
import re
from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import asynccontextmanager
from typing import Any, Final

from aiohttp import web
from aiohttp.typedefs import Handler, Middleware
from multidict import CIMultiDictProxy

from ..backends.base import Backend, DicomJson, Scope, SearchResult
from ..config import AuthSettings, Settings, check_auth
from ..dicomweb.attributes import Level
from ..dicomweb.query import QidoQuery
from ..errors import BackendBusy, Forbidden, NotFound, Unauthorized
from ..fhir.tokens import IssuerTable
from ..security.challenge import challenge, insufficient_scope, invalid_token
from ..security.introspection import (
    IntrospectionClient,
    IntrospectionSettings,
    IntrospectionUnavailable,
)
from ..security.jwks import source_for
from ..security.patient import PatientBinding, PatientClaims, StudyPatients, patient_of
from ..security.scopes import Interaction, classify, satisfies
from ..security.tokens import (
    MAX_TOKEN_LENGTH,
    Principal,
    TokenError,
    TokenPolicy,
    TokenVerifier,
    looks_like_jwt,
)
from .fhir_site import FhirSite, qido
from .keys import PATIENT_BINDING, PRINCIPAL
from .middleware import loggable

__all__ = [
    "NO_SUCH_STUDY",
    "Authenticator",
    "allows_study",
    "auth_middlewares",
    "authenticator_for",
    "bearer_token",
    "bound_qido",
    "bound_search",
    "patient_binding",
    "patient_study",
]

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


class Authenticator:
    """Checks a bearer token: a JWT (three base64url parts) against the JWK Set when one is
    configured, anything else (an opaque token) at the introspection endpoint when that is."""

    def __init__(
        self, verifier: TokenVerifier | None, introspection: IntrospectionClient | None
    ) -> None:
        self._verifier = verifier
        self.introspection = introspection

    async def verify(self, token: str) -> Principal:
        """The token's Principal; TokenError (401), or BackendBusy (503) when the
        introspection endpoint cannot answer."""
        if self._verifier is not None and (self.introspection is None or looks_like_jwt(token)):
            return await self._verifier.verify(token)
        assert self.introspection is not None
        if len(token) > MAX_TOKEN_LENGTH:
            raise TokenError("the token is too long")
        try:
            return await self.introspection.verify(token)
        except IntrospectionUnavailable as exc:
            raise BackendBusy(
                "the token introspection service is unavailable",
                detail={"reason": str(exc)},
                headers={"Retry-After": "5"},
            ) from None

    async def close(self) -> None:
        if self.introspection is not None:
            await self.introspection.close()


def authenticator_for(settings: Settings) -> Authenticator | None:
    """The token checker the settings ask for; None when authentication is off."""
    auth = settings.auth
    if not auth.active:
        return None
    check_auth(auth)  # settings made in code skip the loader: fail closed, never open
    assert auth.token_source is not None and auth.issuer is not None
    policy = TokenPolicy(auth.issuer, auth.audience, auth.algorithms, auth.leeway_seconds)
    verifier = None
    if auth.key_source is not None:
        source = source_for(auth.key_source, min_refresh=auth.jwks_min_refresh_seconds)
        verifier = TokenVerifier(policy, source)
    introspection = None
    if auth.introspection_url is not None:
        assert auth.introspection_client_id and auth.introspection_client_secret
        introspection = IntrospectionClient(
            IntrospectionSettings(
                auth.introspection_url,
                auth.introspection_client_id,
                auth.introspection_client_secret,
                cache_seconds=auth.introspection_cache_seconds,
            ),
            policy,
        )
    return Authenticator(verifier, introspection)


def auth_middlewares(
    settings: Settings, authenticator: Authenticator | None = None
) -> list[Middleware]:
    """The auth middleware, or none when authentication is off. Pass the ``authenticator``
    to close it on shutdown (:func:`create_app` does); else one is made here."""
    auth = settings.auth
    if not auth.active:
        return []
    authenticator = authenticator or authenticator_for(settings)
    assert authenticator is not None
    patients = PatientClaims(
        auth.patient_claim,
        auth.patient_identifier_claim,
        IssuerTable.from_pairs(settings.patient_id_issuers),
    )
    return [_middleware(authenticator, auth, patients, StudyPatients())]


def _middleware(
    verifier: Authenticator, auth: AuthSettings, patients: PatientClaims, studies: StudyPatients
) -> Middleware:
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
            patient = patient_of(principal.claims, patients)  # PatientClaimError: 401 too
        except TokenError as exc:
            log.info("%s %s: token refused: %s", request.method, loggable(request.path), exc)
            raise Unauthorized(
                _UNAUTHORIZED,
                detail={"reason": str(exc)},
                headers={"WWW-Authenticate": invalid_token(str(exc))},
            ) from None
        request[PRINCIPAL] = principal  # set before the scope check: audit records refusals too
        if patient is not None:
            request[PATIENT_BINDING] = PatientBinding(patient, studies)
        scope = auth.required_scope(interaction)
        if scope is not None and not satisfies(principal.scopes, scope):
            log.info("%s %s: token lacks scope %s", request.method, loggable(request.path), scope)
            raise Forbidden(
                _FORBIDDEN,
                detail={"reason": "the token lacks a scope", "scope": scope},
                headers={"WWW-Authenticate": insufficient_scope(scope)},
            )
        return await handler(request)

    return auth_middleware


# ---------------------------------------------------------------- patient-bound access

#: What a patient-bound token gets for a study that is not its patient's, one that does not
#: exist, and anything else not found under a study: one answer, whatever the reason.
NO_SUCH_STUDY: Final = "no such study, series or instance"
_EVERYWHERE: Final = Scope()  # a root-level QIDO: /studies, /series, /instances


def patient_binding(request: web.Request) -> PatientBinding | None:
    """The patient the request's token is bound to; None for an unbound token (or no auth)."""
    return request.get(PATIENT_BINDING)


async def bound_search(
    request: web.Request, backend: Backend, query: QidoQuery, scope: Scope, base_url: str
) -> SearchResult:
    """A QIDO-RS search as the request's token may see it: for a patient-bound token the query
    is narrowed to the patient (nothing asked when it names someone else) and the answers are
    filtered on their PatientID and IssuerOfPatientID."""
    binding = patient_binding(request)
    if binding is None:
        return await backend.search(query, scope, base_url)
    narrowed = binding.narrow(query)
    if narrowed is None:
        return SearchResult([], query.warnings)
    result = await backend.search(narrowed, scope, base_url)
    return SearchResult(binding.filter(result.datasets), result.warnings)


async def bound_qido(
    request: web.Request,
    site: FhirSite,
    params: Sequence[tuple[str, str]],
    level: Level,
    scope: Scope = _EVERYWHERE,
) -> list[DicomJson]:
    """:func:`~.fhir_site.qido` (the FHIR handlers' own QIDO queries) as :func:`bound_search`
    narrows and filters it."""
    binding = patient_binding(request)
    if binding is None:
        return await qido(site, list(params), level, scope)
    narrowed = binding.narrow_params(params, level)
    if narrowed is None:
        return []
    return binding.filter(await qido(site, narrowed, level, scope))


@asynccontextmanager
async def patient_study(
    request: web.Request, site_id: str, backend: Backend, base_url: str, study_uid: str
) -> AsyncIterator[None]:
    """For a patient-bound token: 404 (:data:`NO_SUCH_STUDY`) unless ``study_uid`` is the
    patient's, by one study-level QIDO (kept a short while per site and study); and any 404
    raised in the block becomes that same one. Nothing for an unbound token."""
    if patient_binding(request) is None:
        yield
        return
    if not await allows_study(request, site_id, backend, base_url, study_uid):
        raise NotFound(NO_SUCH_STUDY)
    try:
        yield
    except NotFound:
        raise NotFound(NO_SUCH_STUDY) from None


async def allows_study(
    request: web.Request, site_id: str, backend: Backend, base_url: str, study_uid: str
) -> bool:
    """True if the request's token may read study ``study_uid`` of the site: always for an
    unbound token; for a patient-bound one if the PACS says the study is its patient's (one
    study-level QIDO, kept a short while per site and study). False for a study the PACS
    does not have: the caller answers both the same way."""
    binding = patient_binding(request)
    if binding is None:
        return True

    async def search(query: QidoQuery) -> Sequence[Mapping[str, Any]]:
        return (await backend.search(query, _EVERYWHERE, base_url)).datasets

    return await binding.allows_study(site_id, study_uid, search)
