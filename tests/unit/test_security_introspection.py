"""The pure half of token introspection (RFC 7662): which answers make a Principal."""

from __future__ import annotations

import base64
from typing import Any

import pytest

from ncpeh_dicomweb.config import (
    ConfigError,
    Settings,
    auth_from_mapping,
    check_exposure,
    settings_from_mapping,
)
from ncpeh_dicomweb.security.introspection import (
    IntrospectionUnavailable,
    check_introspected,
    client_authorization,
)
from ncpeh_dicomweb.security.tokens import TokenError, TokenPolicy

POLICY = TokenPolicy("https://idp.example.org", ("https://ncp.example.org/imaging",), leeway=60)
NOW = 1_800_000_000.0


def _answer(**extra: Any) -> dict[str, Any]:
    return {"active": True, "sub": "ncp-fr", "scope": "a b", "exp": NOW + 300, **extra}


def test_an_active_answer_gives_its_principal_with_the_configured_issuer() -> None:
    principal = check_introspected(_answer(client_id="c1"), POLICY, NOW)
    assert principal.subject == "ncp-fr"
    assert principal.client_id == "c1"
    assert principal.scopes == {"a", "b"}
    assert principal.issuer == POLICY.issuer


@pytest.mark.parametrize(
    ("answer", "reason"),
    [
        ({"active": False}, "the token is not active"),
        ({"active": 1}, "the token is not active"),
        ({}, "the token is not active"),
        (_answer(iss="https://evil.example"), "the token is from another issuer"),
        (_answer(aud="https://other.example"), "the token is meant for another audience"),
        (_answer(aud=["x", 3]), "malformed token claims"),
        (_answer(exp=NOW - 61), "the token has expired"),
        (_answer(exp="tomorrow"), "malformed token claims"),
        (_answer(exp=True), "malformed token claims"),
        (_answer(nbf=NOW + 61), "the token is not valid yet"),
        (_answer(token_type="refresh_token"), "the token is not an access token"),
    ],
)
def test_answers_that_do_not_vouch_for_the_token(answer: dict[str, Any], reason: str) -> None:
    with pytest.raises(TokenError, match=f"^{reason}$"):
        check_introspected(answer, POLICY, NOW)


def test_the_leeway_applies_to_exp_and_nbf() -> None:
    check_introspected(_answer(exp=NOW - 59, nbf=NOW + 59), POLICY, NOW)


def test_an_answer_that_is_not_an_object_is_the_idp_s_failure() -> None:
    with pytest.raises(IntrospectionUnavailable):
        check_introspected(["active"], POLICY, NOW)


def test_client_credentials_are_form_encoded_before_base64() -> None:
    value = client_authorization("ncp:gw", "p@ss word")
    assert base64.b64decode(value.removeprefix("Basic ")) == b"ncp%3Agw:p%40ss+word"


def test_config_reads_the_secret_from_the_environment_and_keeps_it_out_of_repr() -> None:
    raw = {
        "introspection_url": "https://idp.example.org/introspect",
        "introspection_client_id": "gw",
        "issuer": "https://idp.example.org",
        "audience": "aud",
    }
    auth = auth_from_mapping(raw, {"NCPEH_INTROSPECTION_CLIENT_SECRET": "hush"})
    assert auth.active and auth.introspection_client_secret == "hush"
    assert "hush" not in repr(auth)
    with pytest.raises(ConfigError, match="introspection_client_secret"):
        auth_from_mapping(raw, {})
    with pytest.raises(ConfigError, match="http"):
        auth_from_mapping(
            {**raw, "introspection_url": "ftp://idp"}, {"NCPEH_INTROSPECTION_CLIENT_SECRET": "x"}
        )


def test_plain_http_introspection_beyond_loopback_is_warned_about() -> None:
    auth = auth_from_mapping(
        {
            "introspection_url": "http://idp.example.org/introspect",
            "introspection_client_id": "gw",
            "introspection_client_secret": "s",
            "issuer": "i",
            "audience": "a",
        }
    )
    base = settings_from_mapping({"sites": [{"id": "a", "url": "http://pacs/dw"}]}, {})
    settings = Settings(sites=base.sites, default_site="a", auth=auth)
    warning = check_exposure(settings)
    assert warning is not None and "in clear" in warning
