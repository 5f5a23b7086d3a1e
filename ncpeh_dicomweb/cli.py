"""Command line: ``ncpeh-dicomweb serve`` and ``ncpeh-dicomweb check-config``."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Sequence
from dataclasses import replace
from typing import Any

from aiohttp import web

from .app import create_app
from .config import ConfigError, Settings, check_http_url, load_settings, settings_from_mapping
from .web.middleware import AccessLogger

__all__ = ["main"]


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ncpeh-dicomweb", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    for name, help_ in (("serve", "run the gateway"), ("check-config", "validate settings")):
        p = sub.add_parser(name, help=help_)
        p.add_argument("--config", help="TOML settings file (default: $NCPEH_CONFIG)")
        p.add_argument("--pacs-dicomweb", metavar="URL", help="one site: this PACS's DICOMweb root")
        p.add_argument("--host", help="address to listen on (default 127.0.0.1)")
        p.add_argument("--port", type=int, help="port to listen on (default 8080)")
        p.add_argument("--public-url", help="the gateway's public base URL")
        p.add_argument("--log-level", default=os.environ.get("NCPEH_LOG_LEVEL", "INFO"))
    return parser


def _settings(args: argparse.Namespace) -> Settings:
    config = args.config or os.environ.get("NCPEH_CONFIG")
    if config and args.pacs_dicomweb:
        raise ConfigError("give either --config or --pacs-dicomweb, not both")
    if config:
        settings = load_settings(config)
    elif args.pacs_dicomweb:
        raw: dict[str, Any] = {
            "sites": [{"id": "default", "kind": "dicomweb", "url": args.pacs_dicomweb}]
        }
        settings = settings_from_mapping(raw, os.environ)
    else:
        raise ConfigError("no settings: give --config FILE, NCPEH_CONFIG, or --pacs-dicomweb URL")
    # Flags override the file.
    overrides: dict[str, Any] = {}
    if args.host:
        overrides["host"] = args.host
    if args.port is not None:
        if not 0 <= args.port <= 65535:
            raise ConfigError(f"--port: {args.port} is not a port number")
        overrides["port"] = args.port
    if args.public_url:
        overrides["public_url"] = check_http_url(args.public_url, "--public-url")
    if overrides:
        settings = replace(settings, **overrides)
    return settings


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(
        level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    try:
        settings = _settings(args)
    except ConfigError as exc:
        print(f"ncpeh-dicomweb: configuration error: {exc}", file=sys.stderr)
        return 2
    if args.command == "check-config":
        sites = ", ".join(f"{s.id} ({s.kind})" for s in settings.sites)
        print(f"configuration OK: sites {sites}; default {settings.default_site}")
        return 0
    web.run_app(
        create_app(settings),
        host=settings.host,
        port=settings.port,
        access_log_class=AccessLogger,
        print=lambda text: print(text, flush=True),
        handle_signals=True,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
