"""The HTTP server around the app: what aiohttp answers before any handler of ours runs.

aiohttp's parser refuses some requests itself (a request line or header over its limits,
too many headers, bytes that are not HTTP) and answers them with a text/plain 400 that
echoes the offending line, query string (patient data) and all. :class:`GatewayRequestHandler`
answers them as the gateway answers everything else: our JSON error body, with nothing of
the request in it, 414 for a request line too long, 431 for headers too long or too many.

It also bounds the time a client may take to send a request's head (``[server]
request_header_timeout``): a slowloris client, trickling its headers byte by byte, is
dropped (with a 408) once that time is up. The timer runs from the connection's start, or
from the first byte of the next request on a keep-alive connection, to the end of the head;
never while a request is handled (a long streamed retrieve is not cut), nor between requests
(aiohttp's ``keepalive_timeout`` bounds an idle keep-alive connection).

Every answer names the server ``ncpeh-dicomweb``, without versions (:func:`add_server_header`
for the app's answers; set here for the refusals).

:func:`serve` runs the app as ``web.run_app`` does (graceful shutdown on SIGINT/SIGTERM:
in-flight requests drain, then the app's on_shutdown and cleanup), with these pieces.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
from collections.abc import Callable
from contextlib import suppress
from email.utils import formatdate
from http import HTTPStatus
from typing import Any

import orjson
from aiohttp import hdrs, web
from aiohttp.abc import AbstractAccessLogger
from aiohttp.http_exceptions import (
    BadHttpMessage,
    BadHttpMethod,
    BadStatusLine,
    HttpProcessingError,
    InvalidHeader,
    InvalidURLError,
    LineTooLong,
    PayloadEncodingError,
)
from aiohttp.streams import StreamReader
from aiohttp.web_protocol import RequestHandler
from aiohttp.web_request import BaseRequest
from aiohttp.web_runner import GracefulExit

from ..errors import BadRequest, GatewayError, UriTooLong
from .middleware import AccessLogger, render_error
from .responses import json_response

__all__ = [
    "SERVER_NAME",
    "GatewayRequestHandler",
    "GatewayRunner",
    "GatewayServer",
    "HeaderFieldsTooLarge",
    "add_server_header",
    "serve",
]

log = logging.getLogger("ncpeh_dicomweb.web")

SERVER_NAME = "ncpeh-dicomweb"
KEEPALIVE_TIMEOUT = 75.0  # web.run_app's default: idle keep-alive connections


class HeaderFieldsTooLarge(GatewayError):
    status = 431
    code = "header-fields-too-large"


class RequestTimeout(GatewayError):
    status = 408
    code = "request-timeout"


def add_server_header(request: web.Request, response: web.StreamResponse) -> None:
    """Our ``Server`` header instead of aiohttp's (Python and aiohttp versions); the app's
    ``on_response_prepare`` hook calls it."""
    response.headers[hdrs.SERVER] = SERVER_NAME


def refusal(
    exc: BaseException | None, *, max_line_size: int, max_field_size: int, max_headers: int
) -> GatewayError:
    """What a request aiohttp's parser refused with ``exc`` is answered with. Nothing of the
    request is repeated: its line and headers may hold patient data."""
    if isinstance(exc, LineTooLong):
        # The C and the Python parser both give the limit that was passed: the request
        # line's, or a header field's (create_app keeps the two apart).
        limit = exc.args[1] if len(exc.args) > 1 else None
        if limit == max_line_size:
            return UriTooLong(
                f"request line longer than {max_line_size} bytes",
                detail={"limit": max_line_size},
            )
        return HeaderFieldsTooLarge(
            f"a request header longer than {max_field_size} bytes",
            detail={"limit": max_field_size},
        )
    if isinstance(exc, HttpProcessingError) and exc.message == "Too many headers received":
        return HeaderFieldsTooLarge(
            f"more than {max_headers} request headers", detail={"limit": max_headers}
        )
    if isinstance(exc, BadHttpMethod):
        return BadRequest("malformed HTTP request: invalid method")
    if isinstance(exc, BadStatusLine | InvalidURLError):
        return BadRequest("malformed HTTP request line")
    if isinstance(exc, InvalidHeader):
        return BadRequest("malformed HTTP request header")
    if isinstance(exc, PayloadEncodingError):
        return BadRequest("malformed HTTP request body framing")
    if isinstance(exc, BadHttpMessage):
        return BadRequest("malformed HTTP request")
    return BadRequest("malformed HTTP request")


class GatewayRequestHandler(RequestHandler):
    """aiohttp's connection handler with our refusals and a request-head timeout."""

    __slots__ = ("_head_bytes", "_head_timeout", "_head_timer", "_last_body")

    def __init__(self, manager: web.Server, *, head_timeout: float, **kwargs: Any) -> None:
        super().__init__(manager, **kwargs)
        self._head_timeout = head_timeout
        self._head_timer: asyncio.TimerHandle | None = None
        self._head_bytes = 0  # of the head being read (to tell a slow client from an idle one)
        self._last_body: StreamReader | None = None  # of the last request read

    # ------------------------------------------------------------ request-head timeout

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        self._arm_head_timer()

    def connection_lost(self, exc: BaseException | None) -> None:
        self._cancel_head_timer()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        heads = self._request_count
        super().data_received(data)
        if self._request_count != heads:
            self._cancel_head_timer()  # a head is complete (or refused)
            if self._messages:
                self._last_body = self._messages[-1][1]
        elif data and self._between_requests():
            if self._head_timer is None:
                self._arm_head_timer()  # the next request on a keep-alive connection
            self._head_bytes += len(data)

    def _between_requests(self) -> bool:
        """True while what arrives can only be a request's head: no request is queued or
        handled, and the last one's body has been read (else bytes are that body's)."""
        body = self._last_body
        return (
            not self._request_in_progress and not self._messages and (body is None or body.is_eof())
        )

    def _arm_head_timer(self) -> None:
        self._cancel_head_timer()
        if self.transport is not None and not self._force_close:
            self._head_timer = self._loop.call_later(self._head_timeout, self._head_timed_out)

    def _cancel_head_timer(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None
        self._head_bytes = 0

    def _head_timed_out(self) -> None:
        self._head_timer = None
        transport = self.transport
        if transport is None or self._force_close:
            return
        if not self._between_requests():
            return  # a request is being handled after all: not ours to cut
        if self._head_bytes:
            # A slow client: tell it why (an idle connection is just closed).
            error = RequestTimeout(
                f"request head not received within {self._head_timeout:g} seconds"
            )
            transport.write(_raw_response(error))
            log.info(
                "closed a connection from %s: request head not received within %gs",
                _peer(self.peername),
                self._head_timeout,
            )
        self.force_close()

    # ------------------------------------------------------------ refusals

    def handle_error(
        self,
        request: BaseRequest,
        status: int = 500,
        exc: BaseException | None = None,
        message: str | None = None,
    ) -> web.StreamResponse:
        """Our JSON error (never ``message``: it quotes the request) instead of aiohttp's
        text/plain one. Closes the connection, as aiohttp's does."""
        if request.writer is not None and request.writer.output_size > 0:
            raise ConnectionError("response already started: no error response can follow")
        if status >= 500:
            self.log_exception("Error handling request from %s", request.remote, exc_info=exc)
            error_body: dict[str, object] = {
                "status": status,
                "error": "internal-error" if status == 500 else "http-error",
                "message": HTTPStatus(status).phrase.lower(),
            }
        else:
            error = refusal(
                exc,
                max_line_size=self.max_line_size,
                max_field_size=self.max_field_size,
                max_headers=self.max_headers,
            )
            # BadHttpMethod first on a connection: mostly TLS or other non-HTTP traffic.
            quiet = self._request_count == 1 and isinstance(exc, BadHttpMethod)
            log.log(
                logging.DEBUG if quiet else logging.INFO,
                "refused a malformed HTTP request from %s: %d %s",
                request.remote,
                error.status,
                error.code,
            )
            status, error_body = error.status, error.body()
        if isinstance(request, web.Request):  # always, with the app's request factory
            response = render_error(request, status, error_body)
        else:
            response = json_response(error_body, status=status, content_type="application/json")
        response.headers[hdrs.SERVER] = SERVER_NAME
        response.force_close()
        return response


def _peer(peername: object) -> str:
    if isinstance(peername, tuple) and peername:
        return str(peername[0])
    return "-"


def _raw_response(error: GatewayError) -> bytes:
    """``error`` as a whole HTTP/1.1 response, written without aiohttp's writer (no request
    was read)."""
    body = orjson.dumps(error.body())
    reason = HTTPStatus(error.status).phrase
    head = (
        f"HTTP/1.1 {error.status} {reason}\r\n"
        f"Date: {formatdate(usegmt=True)}\r\n"
        f"Server: {SERVER_NAME}\r\n"
        "Content-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n"
        "Connection: close\r\n\r\n"
    )
    return head.encode("ascii") + body


class GatewayServer(web.Server):
    """``web.Server`` making :class:`GatewayRequestHandler` connections."""

    def __init__(
        self, handler: Any, *, head_timeout: float, **kwargs: Any
    ) -> None:  # handler: aiohttp's private _RequestHandler type
        super().__init__(handler, **kwargs)
        self.head_timeout = head_timeout

    def __call__(self) -> RequestHandler:
        return GatewayRequestHandler(
            self, loop=self._loop, head_timeout=self.head_timeout, **self._kwargs
        )


class GatewayRunner(web.AppRunner):
    """``web.AppRunner`` serving the app through :class:`GatewayServer`."""

    __slots__ = ("_head_timeout",)

    def __init__(self, app: web.Application, *, head_timeout: float, **kwargs: Any) -> None:
        super().__init__(app, **kwargs)
        self._head_timeout = head_timeout

    async def _make_server(self) -> web.Server:
        base = await super()._make_server()  # runs the app's startup, as aiohttp does
        return GatewayServer(
            base.request_handler,
            request_factory=base.request_factory,
            handler_cancellation=base.handler_cancellation,
            loop=base._loop,
            head_timeout=self._head_timeout,
            **base._kwargs,
        )


async def _run(
    app: web.Application,
    *,
    host: str,
    port: int,
    ssl_context: ssl.SSLContext | None,
    head_timeout: float,
    access_log_class: type[AbstractAccessLogger],
    print_: Callable[[str], None] | None,
    reuse_port: bool,
) -> None:
    runner = GatewayRunner(
        app,
        head_timeout=head_timeout,
        handle_signals=True,  # SIGINT, SIGTERM → GracefulExit
        access_log_class=access_log_class,
        keepalive_timeout=KEEPALIVE_TIMEOUT,
    )
    await runner.setup()
    try:
        site = web.TCPSite(runner, host, port, ssl_context=ssl_context, reuse_port=reuse_port)
        await site.start()
        if print_ is not None:
            names = sorted(str(s.name) for s in runner.sites)
            print_(f"======== Running on {', '.join(names)} ========\n(Press CTRL+C to quit)")
        await asyncio.Event().wait()  # until GracefulExit (a signal) cancels this task
    finally:
        # Stops listening, runs on_shutdown, lets in-flight requests finish (up to the
        # runner's shutdown_timeout), then the app's cleanup (audit trail last).
        await runner.cleanup()


def serve(
    app: web.Application,
    *,
    host: str,
    port: int,
    ssl_context: ssl.SSLContext | None = None,
    head_timeout: float = 15.0,
    access_log_class: type[AbstractAccessLogger] = AccessLogger,
    print_: Callable[[str], None] | None = print,
    reuse_port: bool = False,
) -> None:
    """Run ``app`` until SIGINT or SIGTERM, as ``web.run_app`` does, with our server. An
    exception of the app's startup (or of the server) propagates. ``reuse_port``: listen with
    ``SO_REUSEPORT``, beside the other workers on the port (web/workers.py)."""
    loop = asyncio.new_event_loop()
    main = loop.create_task(
        _run(
            app,
            host=host,
            port=port,
            ssl_context=ssl_context,
            head_timeout=head_timeout,
            access_log_class=access_log_class,
            print_=print_,
            reuse_port=reuse_port,
        )
    )
    try:
        asyncio.set_event_loop(loop)
        loop.run_until_complete(main)
    except (GracefulExit, KeyboardInterrupt):
        pass
    finally:
        try:
            if not main.done():
                main.cancel()
                with suppress(asyncio.CancelledError):
                    loop.run_until_complete(main)  # runner.cleanup(): the graceful part
        finally:
            _cancel_tasks(loop)
            loop.run_until_complete(loop.shutdown_asyncgens())
            asyncio.set_event_loop(None)
            loop.close()


def _cancel_tasks(loop: asyncio.AbstractEventLoop) -> None:
    tasks = asyncio.all_tasks(loop)
    if not tasks:
        return
    for task in tasks:
        task.cancel()
    loop.run_until_complete(asyncio.gather(*tasks, return_exceptions=True))
    for task in tasks:
        if not task.cancelled() and task.exception() is not None:
            loop.call_exception_handler(
                {
                    "message": "unhandled exception during shutdown",
                    "exception": task.exception(),
                    "task": task,
                }
            )
