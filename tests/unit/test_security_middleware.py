"""The auth middleware's pure parts: the Authorization header, and failing closed."""

from __future__ import annotations

import pytest
from multidict import CIMultiDict, CIMultiDictProxy

from ncpeh_dicomweb.config import AuthSettings, ConfigError, Settings, settings_from_mapping
from ncpeh_dicomweb.security.tokens import TokenError
from ncpeh_dicomweb.web.auth import auth_middlewares, bearer_token


def _headers(*values: str) -> CIMultiDictProxy[str]:
    return CIMultiDictProxy(CIMultiDict([("Authorization", v) for v in values]))


@pytest.mark.parametrize(
    ("values", "token"),
    [
        ((), None),
        (("Basic dXNlcjpwYXNz",), None),  # another scheme: no bearer credentials
        (("Bearerx abc",), None),
        (("Bearer abc.def.ghi",), "abc.def.ghi"),
        (("bearer abc.def.ghi",), "abc.def.ghi"),
        (("BEARER   abc.def.ghi  ",), "abc.def.ghi"),
        (("Bearer a-b_c~d+e/f==",), "a-b_c~d+e/f=="),
    ],
)
def test_bearer_token(values: tuple[str, ...], token: str | None) -> None:
    assert bearer_token(_headers(*values)) == token


@pytest.mark.parametrize(
    "values",
    [
        ("Bearer",),
        ("Bearer ",),
        ("Bearer a b",),
        ("Bearer a,b",),
        ('Bearer "abc"',),
        ("Bearer a=b",),
        ("Bearer abc", "Bearer abc"),
    ],
)
def test_malformed_authorization(values: tuple[str, ...]) -> None:
    with pytest.raises(TokenError):
        bearer_token(_headers(*values))


def test_no_middleware_when_auth_is_off() -> None:
    settings = settings_from_mapping({"sites": [{"id": "a", "url": "http://pacs/dw"}]}, {})
    assert auth_middlewares(settings) == []


def test_settings_made_in_code_fail_closed() -> None:
    base = settings_from_mapping({"sites": [{"id": "a", "url": "http://pacs/dw"}]}, {})
    for auth in (
        AuthSettings(enabled=True),
        AuthSettings(jwks_url="https://idp/jwks"),
        AuthSettings(jwks_url="https://idp/jwks", issuer="https://idp"),
    ):
        settings = Settings(sites=base.sites, default_site="a", auth=auth)
        with pytest.raises(ConfigError):
            auth_middlewares(settings)
    on = AuthSettings(jwks_url="https://idp/jwks", issuer="https://idp", audience=("x",))
    assert len(auth_middlewares(Settings(sites=base.sites, default_site="a", auth=on))) == 1
