"""The audit trail's settings (``[audit]`` in the gateway's config), validated: a bad value
raises ValueError naming the key.

Example::

    [audit]
    sinks = ["jsonl", "syslog"]          # default ["jsonl"]
    source_id = "ncp-cz-imaging-gw1"     # the gateway, as AuditEvents name it
    jsonl_path = "var/audit/audit.jsonl"
    fsync_interval = 1.0                 # seconds; 0: fsync every batch
    queue_size = 10000
    syslog_host = "arr.ncp.example"
    syslog_port = 6514
    syslog_transport = "tls"             # tls (RFC 5425, default) or tcp (RFC 6587)
    syslog_ca_file = "/etc/ncpeh/arr-ca.pem"
    syslog_cert_file = "/etc/ncpeh/node.pem"   # our node certificate (ATNA mutual TLS)
    syslog_key_file = "/etc/ncpeh/node.key"
    spool_dir = "var/audit/spool"
    spool_max_bytes = 268435456
    close_timeout = 5.0                  # at stop, how long to try delivering the spool
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

from .syslog import DEFAULT_APP_NAME, DEFAULT_MSGID, header_field

__all__ = ["AuditSettings"]

_SINKS = ("jsonl", "syslog")
_DEFAULT_PORTS = {"tls": 6514, "tcp": 514}  # RFC 5425 8; the de facto plain TCP port


@dataclass(frozen=True, slots=True)
class AuditSettings:
    sinks: tuple[Literal["jsonl", "syslog"], ...] = ("jsonl",)
    source_id: str = "ncpeh-dicomweb"
    jsonl_path: str = "var/audit/audit.jsonl"
    fsync_interval: float = 1.0
    queue_size: int = 10000
    syslog_host: str | None = None
    syslog_port: int = 6514
    syslog_transport: Literal["tls", "tcp"] = "tls"
    syslog_ca_file: str | None = None  # None: the system's CAs
    syslog_cert_file: str | None = None
    syslog_key_file: str | None = None
    syslog_server_name: str | None = None  # the name its certificate must bear; None: host
    syslog_hostname: str | None = None  # our RFC 5424 HOSTNAME; None: this machine's name
    syslog_app_name: str = DEFAULT_APP_NAME
    syslog_msgid: str = DEFAULT_MSGID
    spool_dir: str = "var/audit/spool"
    spool_max_bytes: int = 256 << 20
    close_timeout: float = 5.0
    settle: float = 2.0  # see syslog.py: how long an acknowledged message stays in the spool
    reconnect_max_delay: float = 30.0

    @classmethod
    def from_mapping(cls, raw: Mapping[str, Any]) -> AuditSettings:
        """Settings from a mapping (the ``[audit]`` table); ValueError names a bad key."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(raw) - known)
        if unknown:
            raise ValueError(f"audit: unknown key(s): {', '.join(unknown)}")
        values: dict[str, Any] = {}

        sinks = raw.get("sinks", ["jsonl"])
        if (
            not isinstance(sinks, list | tuple)
            or not sinks
            or any(s not in _SINKS for s in sinks)
            or len(set(sinks)) != len(sinks)
        ):
            raise ValueError('audit.sinks: a non-empty list of "jsonl" and/or "syslog"')
        values["sinks"] = tuple(sinks)

        for key in ("source_id", "jsonl_path", "spool_dir"):
            if key in raw:
                values[key] = _text(raw, key)
        for key in ("syslog_ca_file", "syslog_cert_file", "syslog_key_file"):
            if key in raw:
                values[key] = _text(raw, key)
        for key, limit in (("syslog_hostname", 255), ("syslog_server_name", 255)):
            if key in raw:
                values[key] = _field(raw, key, limit)
        if "syslog_app_name" in raw:
            values["syslog_app_name"] = _field(raw, "syslog_app_name", 48)
        if "syslog_msgid" in raw:
            values["syslog_msgid"] = _field(raw, "syslog_msgid", 32)

        values["fsync_interval"] = _number(raw, "fsync_interval", 1.0, 0.0, 3600.0)
        values["close_timeout"] = _number(raw, "close_timeout", 5.0, 0.0, 600.0)
        values["settle"] = _number(raw, "settle", 2.0, 0.0, 600.0)
        values["reconnect_max_delay"] = _number(raw, "reconnect_max_delay", 30.0, 0.1, 3600.0)
        values["queue_size"] = _integer(raw, "queue_size", 10000, 1, 10_000_000)
        values["spool_max_bytes"] = _integer(raw, "spool_max_bytes", 256 << 20, 1024, 1 << 50)

        transport = raw.get("syslog_transport", "tls")
        if transport not in _DEFAULT_PORTS:
            raise ValueError('audit.syslog_transport: "tls" or "tcp"')
        values["syslog_transport"] = transport
        values["syslog_port"] = _integer(raw, "syslog_port", _DEFAULT_PORTS[transport], 1, 65535)
        if "syslog_host" in raw:
            values["syslog_host"] = _field(raw, "syslog_host", 255)

        if "syslog" in values["sinks"] and not values.get("syslog_host"):
            raise ValueError('audit.syslog_host: required with the "syslog" sink')
        if bool(values.get("syslog_cert_file")) != bool(values.get("syslog_key_file")):
            raise ValueError("audit.syslog_key_file: give both syslog_cert_file and key_file")
        if transport == "tcp" and any(
            values.get(k) for k in ("syslog_ca_file", "syslog_cert_file", "syslog_key_file")
        ):
            raise ValueError('audit.syslog_transport: certificates need "tls"')
        return cls(**values)


def _text(raw: Mapping[str, Any], key: str) -> str:
    value = raw[key]
    if not isinstance(value, str) or not value.strip():
        raise ValueError(f"audit.{key}: a non-empty string")
    return value


def _field(raw: Mapping[str, Any], key: str, limit: int) -> str:
    value = raw[key]
    if not isinstance(value, str):
        raise ValueError(f"audit.{key}: a string")
    return header_field(value, f"audit.{key}", limit)


def _number(raw: Mapping[str, Any], key: str, default: float, lo: float, hi: float) -> float:
    value = raw.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int | float) or not lo <= value <= hi:
        raise ValueError(f"audit.{key}: a number from {lo:g} to {hi:g}")
    return float(value)


def _integer(raw: Mapping[str, Any], key: str, default: int, lo: int, hi: int) -> int:
    value = raw.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
        raise ValueError(f"audit.{key}: an integer from {lo} to {hi}")
    return value
