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

__all__ = ["forwarded_origin", "is_trusted"]

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
