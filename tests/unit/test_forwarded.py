"""The public URL from a trusted proxy's headers (RFC 7239 Forwarded, X-Forwarded-*)."""

from __future__ import annotations

import pytest

from ncpeh_dicomweb.web.forwarded import (
    client_address,
    forwarded_client,
    forwarded_origin,
    is_trusted,
)


@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        ({}, None),
        ({"Forwarded": "host=gw.example;proto=https"}, "https://gw.example"),
        (
            {"Forwarded": 'for=1.2.3.4;host="gw.example:8443";proto=https'},
            "https://gw.example:8443",
        ),
        # the nearest proxy's element (the last) counts; the client may have forged the first
        ({"Forwarded": "host=evil.example, host=gw.example;proto=https"}, "https://gw.example"),
        ({"X-Forwarded-Host": "gw.example", "X-Forwarded-Proto": "https"}, "https://gw.example"),
        ({"X-Forwarded-Host": "evil.example, gw.example"}, "http://gw.example"),
        (
            {"Forwarded": "host=gw.example;proto=https", "X-Forwarded-Host": "other.example"},
            "https://gw.example",
        ),
        (
            {"X-Forwarded-Host": "gw.example", "X-Forwarded-Prefix": "/pacs/"},
            "http://gw.example/pacs",
        ),
        ({"Forwarded": "host=[2001:db8::1]:443;proto=https"}, "https://[2001:db8::1]:443"),
        # nothing odd is echoed into URLs the gateway writes
        ({"Forwarded": "host=gw.example/evil;proto=https"}, None),
        ({"Forwarded": "host=gw.example;proto=javascript"}, None),
        ({"X-Forwarded-Host": 'gw.example"><script>'}, None),
        ({"X-Forwarded-Host": "gw.example", "X-Forwarded-Prefix": "/a/../b"}, "http://gw.example"),
        ({"X-Forwarded-Proto": "https"}, None),
    ],
)
def test_forwarded_origin(headers: dict[str, str], expected: str | None) -> None:
    assert forwarded_origin(headers) == expected


@pytest.mark.parametrize(
    ("remote", "networks", "expected"),
    [
        ("127.0.0.1", ["127.0.0.1/32"], True),
        ("10.1.2.3", ["10.0.0.0/8"], True),
        ("10.1.2.3", ["127.0.0.1/32"], False),
        ("::1", ["::1/128"], True),
        ("127.0.0.1", [], False),
        (None, ["127.0.0.1/32"], False),
        ("not-an-ip", ["127.0.0.1/32"], False),
    ],
)
def test_is_trusted(remote: str | None, networks: list[str], expected: bool) -> None:
    assert is_trusted(remote, networks) is expected


@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        ({"X-Forwarded-For": "203.0.113.7"}, "203.0.113.7"),
        ({"X-Forwarded-For": "10.9.9.9, 203.0.113.7"}, "203.0.113.7"),  # the nearest proxy's
        ({"Forwarded": 'for="[2001:db8::1]:4711"'}, "2001:db8::1"),
        ({"Forwarded": "for=192.0.2.60:8080;proto=https"}, "192.0.2.60"),
        ({"Forwarded": "for=unknown", "X-Forwarded-For": "198.51.100.1"}, None),
        ({"X-Forwarded-For": "not-an-address"}, None),
        ({}, None),
    ],
)
def test_forwarded_client(headers: dict[str, str], expected: str | None) -> None:
    assert forwarded_client(headers) == expected


def test_client_address_believes_only_trusted_proxies() -> None:
    headers = {"X-Forwarded-For": "203.0.113.7"}
    assert client_address("127.0.0.1", headers, ["127.0.0.0/8"]) == "203.0.113.7"
    assert client_address("192.0.2.1", headers, ["127.0.0.0/8"]) == "192.0.2.1"
    assert client_address("127.0.0.1", {}, ["127.0.0.0/8"]) == "127.0.0.1"
