"""The public URL a client used, as a trusted reverse proxy reports it (RFC 7239 ``Forwarded``,
or the de facto ``X-Forwarded-Host`` / ``-Proto`` / ``-Prefix``). Pure: headers in, URL out.

Only the element the nearest proxy added is read (the last one): earlier elements come from
further away and may be forged by the client itself. Values that are not a plain host, an
http(s) scheme or a clean path prefix are ignored rather than echoed into answers.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Mapping, Sequence

__all__ = ["client_address", "forwarded_client", "forwarded_origin", "is_trusted"]

_HOST = re.compile(r"(?:[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*|\[[0-9A-Fa-f:.]+\])(?::[0-9]{1,5})?")
_PREFIX = re.compile(r"(?:/[A-Za-z0-9._~-]+)+")


def is_trusted(remote: str | None, networks: Sequence[str]) -> bool:
    """Whether the peer address ``remote`` lies in one of ``networks``."""
    if not remote or not networks:
        return False
    try:
        address = ipaddress.ip_address(remote)
    except ValueError:
        return False
    return any(address in ipaddress.ip_network(n) for n in networks)


def _last(value: str | None) -> str | None:
    if value is None:
        return None
    last = value.split(",")[-1].strip()
    return last or None


def _forwarded_pairs(value: str | None) -> dict[str, str]:
    """The parameters of the last element of a Forwarded header (RFC 7239 section 4)."""
    element = _last(value)
    pairs: dict[str, str] = {}
    for pair in (element or "").split(";"):
        name, eq, raw = pair.partition("=")
        if eq:
            pairs[name.strip().lower()] = raw.strip().strip('"')
    return pairs


def forwarded_client(headers: Mapping[str, str]) -> str | None:
    """The client's address as the nearest proxy reports it (``Forwarded: for=``, else the
    last ``X-Forwarded-For``), or None when that is not an IP address (``unknown``, an
    obfuscated identifier, garbage)."""
    pairs = _forwarded_pairs(headers.get("Forwarded"))
    value = pairs.get("for") or _last(headers.get("X-Forwarded-For"))
    if value is None:
        return None
    value = value.strip('"')
    if value.startswith("["):  # RFC 7239 6: "[v6]:port"
        value = value[1 : value.find("]")] if "]" in value else ""
    elif value.count(":") == 1:  # v4:port
        value = value.split(":", 1)[0]
    try:
        return str(ipaddress.ip_address(value))
    except ValueError:
        return None


def client_address(
    remote: str | None, headers: Mapping[str, str], networks: Sequence[str]
) -> str | None:
    """Who the client is: the address a trusted proxy reports, else the peer's own."""
    if is_trusted(remote, networks):
        return forwarded_client(headers) or remote
    return remote


def forwarded_origin(headers: Mapping[str, str]) -> str | None:
    """``scheme://host[/prefix]`` from the proxy's headers, or None if they name no host.

    ``Forwarded: host=...;proto=...`` wins over ``X-Forwarded-Host`` / ``X-Forwarded-Proto``;
    ``X-Forwarded-Prefix`` adds a path (a gateway mounted under a sub-path).
    """
    pairs = _forwarded_pairs(headers.get("Forwarded"))
    host = pairs.get("host") or _last(headers.get("X-Forwarded-Host"))
    proto = (pairs.get("proto") or _last(headers.get("X-Forwarded-Proto")) or "http").lower()
    if host is None or not _HOST.fullmatch(host) or proto not in ("http", "https"):
        return None
    prefix = _last(headers.get("X-Forwarded-Prefix")) or ""
    prefix = prefix.rstrip("/")
    if prefix and (
        not _PREFIX.fullmatch(prefix) or any(seg in (".", "..") for seg in prefix.split("/"))
    ):
        prefix = ""
    return f"{proto}://{host}{prefix}"
