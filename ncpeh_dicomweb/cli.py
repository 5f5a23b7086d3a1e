"""Command line: ``ncpeh-dicomweb serve``, ``check-config`` and ``conformance`` (the harness of
``conformance/``, run against any endpoint)."""

from __future__ import annotations

import argparse
import logging
import os
import ssl
import sys
from collections.abc import Sequence
from dataclasses import replace
from typing import Any

from conformance import cli as conformance_cli

from .app import create_app
from .config import (
    MAX_WORKERS,
    AuthSettings,
    ConfigError,
    Settings,
    check_auth,
    check_database_url,
    check_exposure,
    check_http_url,
    check_jwks_file,
    check_jwks_url,
    check_viewer_dir,
    load_settings,
    parse_dimse_address,
    settings_from_mapping,
)
from .state import StoreOpenError
from .web.middleware import AccessLogger, RedactServerErrors
from .web.server import serve
from .web.tls import server_context
from .web.workers import check_workers, supervise, watch_supervisor, worker_settings

__all__ = ["main"]


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ncpeh-dicomweb", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    for name, help_ in (("serve", "run the gateway"), ("check-config", "validate settings")):
        p = sub.add_parser(name, help=help_)
        p.add_argument("--config", help="TOML settings file (default: $NCPEH_CONFIG)")
        p.add_argument("--pacs-dicomweb", metavar="URL", help="one site: this PACS's DICOMweb root")
        p.add_argument("--pacs-dimse", metavar="AET@HOST:PORT", help="one site: this DIMSE PACS")
        p.add_argument("--ae-title", help="our AE title toward a DIMSE PACS (default NCPEH-GW)")
        p.add_argument("--retrieve", choices=("c-get", "c-move"), help="DIMSE retrieve method")
        p.add_argument("--store-port", type=int, help="port of our C-MOVE storage SCP")
        p.add_argument("--cache-dir", help="instance cache of a DIMSE site (default: temporary)")
        p.add_argument("--host", help="address to listen on (default 127.0.0.1)")
        p.add_argument("--port", type=int, help="port to listen on (default 8080)")
        p.add_argument(
            "--workers", type=int, metavar="N", help="processes serving the port (default 1)"
        )
        p.add_argument("--public-url", help="the gateway's public base URL")
        p.add_argument("--viewer-dir", help="serve this OHIF dist/ at /viewer/ (scripts/ohif.sh)")
        p.add_argument(
            "--database-url",
            metavar="URL",
            help="keep state in this PostgreSQL database (postgresql://...) instead of SQLite",
        )
        p.add_argument(
            "--jwks",
            metavar="FILE|URL",
            help="check client bearer tokens against this JWK Set (file, or http(s) URL)",
        )
        p.add_argument("--issuer", metavar="ISS", help="the tokens' issuer (iss)")
        p.add_argument(
            "--audience",
            metavar="AUD",
            action="append",
            help="an audience (aud) the tokens must name; repeatable",
        )
        p.add_argument("--log-level", default=os.environ.get("NCPEH_LOG_LEVEL", "INFO"))
        # Set by the supervisor of --workers N on the workers it starts (web/workers.py).
        p.add_argument("--worker", type=int, help=argparse.SUPPRESS)
        p.add_argument("--supervisor", type=int, help=argparse.SUPPRESS)
    conformance = sub.add_parser(
        "conformance",
        help="check a DICOMweb/FHIR endpoint",
        description=conformance_cli.DESCRIPTION,
    )
    conformance_cli.add_arguments(conformance)
    return parser


def _settings(args: argparse.Namespace) -> Settings:
    config = args.config or os.environ.get("NCPEH_CONFIG")
    given = [x for x in (config, args.pacs_dicomweb, args.pacs_dimse) if x]
    if len(given) > 1:
        raise ConfigError("give only one of --config, --pacs-dicomweb, --pacs-dimse")
    if config:
        settings = load_settings(config)
    elif args.pacs_dicomweb:
        site: dict[str, Any] = {"id": "default", "kind": "dicomweb", "url": args.pacs_dicomweb}
        settings = settings_from_mapping({"sites": [site]}, os.environ)
    elif args.pacs_dimse:
        aet, host, port = parse_dimse_address(args.pacs_dimse)
        site = {"id": "default", "kind": "dimse", "host": host, "port": port, "called_aet": aet}
        for flag, key in (
            ("ae_title", "calling_aet"),
            ("retrieve", "retrieve"),
            ("store_port", "store_port"),
            ("cache_dir", "cache_dir"),
        ):
            if getattr(args, flag) is not None:
                site[key] = getattr(args, flag)
        settings = settings_from_mapping({"sites": [site]}, os.environ)
    else:
        raise ConfigError(
            "no settings: give --config FILE (or NCPEH_CONFIG), --pacs-dicomweb "
            "URL or --pacs-dimse AET@HOST:PORT"
        )
    # Flags override the file.
    overrides: dict[str, Any] = {}
    if args.host:
        overrides["host"] = args.host
    if args.port is not None:
        if not 0 <= args.port <= 65535:
            raise ConfigError(f"--port: {args.port} is not a port number")
        overrides["port"] = args.port
    if args.workers is not None:
        if not 1 <= args.workers <= MAX_WORKERS:
            raise ConfigError(f"--workers: {args.workers} is not between 1 and {MAX_WORKERS}")
        overrides["workers"] = args.workers
    if args.public_url:
        overrides["public_url"] = check_http_url(args.public_url, "--public-url")
    if args.viewer_dir:
        overrides["viewer_dir"] = check_viewer_dir(args.viewer_dir, "--viewer-dir")
    if args.database_url:
        overrides["database_url"] = check_database_url(args.database_url, "--database-url")
    auth = _auth_flags(args, settings)
    if auth is not settings.auth:
        overrides["auth"] = auth
    if overrides:
        settings = replace(settings, **overrides)
    return settings


def _auth_flags(args: argparse.Namespace, settings: Settings) -> AuthSettings:
    """``settings.auth`` with ``--jwks``, ``--issuer`` and ``--audience`` applied (the same
    object if none is given). ``--jwks`` switches auth on, whatever the file says."""
    if args.jwks is None and args.issuer is None and args.audience is None:
        return settings.auth
    auth = settings.auth
    if args.jwks is not None:
        if args.jwks.startswith(("http://", "https://")):
            url = check_jwks_url(args.jwks, "--jwks")
            auth = replace(auth, jwks_url=url, jwks_file=None, enabled=True)
        else:
            path = check_jwks_file(args.jwks, "--jwks")
            auth = replace(auth, jwks_file=path, jwks_url=None, enabled=True)
    if args.issuer is not None:
        if not args.issuer:
            raise ConfigError("--issuer: must not be empty")
        auth = replace(auth, issuer=args.issuer)
    if args.audience is not None:
        if not all(args.audience):
            raise ConfigError("--audience: must not be empty")
        auth = replace(auth, audience=tuple(args.audience))
    return check_auth(auth)


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = _parser().parse_args(argv)
    if args.command == "conformance":
        return conformance_cli.run_args(args)
    worker = "" if args.worker is None else f"[worker {args.worker}] "
    logging.basicConfig(
        level=args.log_level.upper(),
        format=f"%(asctime)s %(levelname)s {worker}%(name)s: %(message)s",
    )
    logging.getLogger("aiohttp.server").addFilter(RedactServerErrors())
    # pynetdicom logs every DIMSE message at INFO (and identifiers, i.e. patient data, at DEBUG).
    logging.getLogger("pynetdicom").setLevel(max(logging.WARNING, logging.getLogger().level))
    try:
        settings = _settings(args)
        exposure = check_exposure(settings)  # safe by default: see config.check_exposure
        check_workers(settings)
        # Built for check-config too: OpenSSL has the last word on the files.
        ssl_context = None if settings.tls is None else server_context(settings.tls)
    except ConfigError as exc:
        print(f"ncpeh-dicomweb: configuration error: {exc}", file=sys.stderr)
        return 2
    if args.worker is not None:
        return _serve_worker(settings, ssl_context, args.worker, args.supervisor or os.getppid())
    if exposure is not None:
        logging.getLogger(__name__).warning("%s", exposure)
    if settings.public_url is None:
        logging.getLogger(__name__).warning(
            "public_url is not set: URLs in answers follow each request's Host header; "
            "set it in production"
        )
    elif settings.tls is not None and settings.public_url.startswith("http://"):
        logging.getLogger(__name__).warning(
            "public_url is http:// but the gateway serves HTTPS: URLs in answers will not work"
        )
    if args.command == "check-config":
        sites = ", ".join(f"{s.id} ({s.kind})" for s in settings.sites)
        viewer = f"; viewer at /viewer/ from {settings.viewer_dir}" if settings.viewer_dir else ""
        auth = settings.auth
        tokens = f"bearer tokens from {auth.key_source}" if auth.active else "OFF"
        print(
            f"configuration OK: sites {sites}; default {settings.default_site}{viewer}; "
            f"auth {tokens}; {_transport(settings)}; {settings.workers} worker(s)"
        )
        return 0
    logging.getLogger(__name__).info("%s", _transport(settings))
    if settings.workers > 1:
        return supervise(argv, workers=settings.workers, host=settings.host, port=settings.port)
    try:
        # web.run_app, with our refusals of malformed requests and a request-head timeout.
        serve(
            create_app(settings),
            host=settings.host,
            port=settings.port,
            ssl_context=ssl_context,
            head_timeout=settings.request_header_timeout,
            access_log_class=AccessLogger,
            print_=lambda text: print(text, flush=True),
        )
    except StoreOpenError as exc:
        print(f"ncpeh-dicomweb: state store: {exc}", file=sys.stderr)
        return 1
    return 0


def _serve_worker(
    settings: Settings, ssl_context: ssl.SSLContext | None, slot: int, supervisor: int
) -> int:
    """One of the workers of ``serve --workers N`` (web/workers.py); the supervisor warned."""
    app = create_app(worker_settings(settings, slot))
    app.cleanup_ctx.append(watch_supervisor(supervisor))
    try:
        serve(
            app,
            host=settings.host,
            port=settings.port,
            ssl_context=ssl_context,
            head_timeout=settings.request_header_timeout,
            access_log_class=AccessLogger,
            print_=lambda text: print(f"[worker {slot}] {text}", flush=True),
            reuse_port=True,
        )
    except StoreOpenError as exc:
        print(f"ncpeh-dicomweb: state store: {exc}", file=sys.stderr)
        return 1
    return 0


def _transport(settings: Settings) -> str:
    """How clients connect, in a few words (logged at start, printed by check-config)."""
    tls = settings.tls
    if tls is None:
        return "plain HTTP"
    if tls.client_cert == "none":
        return f"HTTPS (TLS {tls.min_version}+), no client certificates"
    mapped = len(tls.client_identities)
    return (
        f"HTTPS (TLS {tls.min_version}+), client certificates {tls.client_cert} "
        f"(CAs in {tls.client_ca}; {mapped} subject(s) mapped to client ids)"
    )


if __name__ == "__main__":
    sys.exit(main())
