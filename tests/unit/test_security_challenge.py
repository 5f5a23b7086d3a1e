"""The WWW-Authenticate challenge (RFC 6750 3): exact strings."""

from __future__ import annotations

import pytest

from ncpeh_dicomweb.security.challenge import challenge, insufficient_scope, invalid_token


def test_missing_token_has_no_error_code() -> None:
    assert challenge() == 'Bearer realm="ncpeh-dicomweb"'


def test_invalid_token() -> None:
    assert invalid_token("the token has expired") == (
        'Bearer realm="ncpeh-dicomweb", error="invalid_token", '
        'error_description="the token has expired"'
    )


def test_insufficient_scope_names_the_scope() -> None:
    assert insufficient_scope("system/ImagingStudy.rs") == (
        'Bearer realm="ncpeh-dicomweb", error="insufficient_scope", '
        'error_description="the token lacks the scope this interaction needs", '
        'scope="system/ImagingStudy.rs"'
    )


def test_parameters_in_order_and_optional() -> None:
    assert challenge("r", error="e") == 'Bearer realm="r", error="e"'
    assert challenge("r", scope="a b") == 'Bearer realm="r", scope="a b"'
    assert challenge("r", error="e", description="") == 'Bearer realm="r", error="e"'


@pytest.mark.parametrize(
    ("value", "quoted"),
    [
        ('say "hi"', r'"say \"hi\""'),
        ("back\\slash", r'"back\\slash"'),
        ("a\r\nSet-Cookie: x=1", '"a??Set-Cookie: x=1"'),  # no header splitting
        ("nul\x00del\x7f", '"nul?del?"'),
        ("caf\u00e9", '"caf?"'),
        ("x" * 500, '"' + "x" * 200 + '"'),
    ],
)
def test_values_are_quote_escaped_and_safe(value: str, quoted: str) -> None:
    header = challenge(value)
    assert header == f"Bearer realm={quoted}"
    assert "\r" not in header and "\n" not in header
    assert header.isascii()
