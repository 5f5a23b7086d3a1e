"""Turns every failure into a JSON answer with the right status; never a traceback."""

from __future__ import annotations

import logging
import re
import time
from typing import Any

import orjson
from aiohttp import web
from aiohttp.abc import AbstractAccessLogger
from aiohttp.typedefs import Handler

from ..errors import GatewayError
from ..fhir.negotiation import R4
from ..fhir.outcome import operation_outcome, outcome_for_status
from .after_answer import defer
from .keys import REQUEST_ID, abort_connection
from .responses import json_response

__all__ = ["AccessLogger", "RedactServerErrors", "error_middleware", "loggable", "render_error"]

log = logging.getLogger("ncpeh_dicomweb.web")

_ERROR_TYPE = "application/json"
_FHIR_TYPE = R4.content_type  # errors come before (or without) negotiation: R4's form
# aiohttp's own HTTP errors (unknown route, wrong method, ...) get our body too.
_HTTP_CODES = {404: "not-found", 405: "method-not-allowed", 413: "payload-too-large"}


# FHIR routes answer errors as OperationOutcome; the vendor by-id route as its API says.
_FHIR_PATH = re.compile(r"^(?:/site/[^/]+)?/fhir(?:/|$)")
_VENDOR_PATH = re.compile(r"^/site/[^/]+/fhir/imaging-study/")


def render_error(request: web.Request, status: int, body: dict[str, Any]) -> web.Response:
    """The error ``body`` (our JSON form) in the form the route's clients expect."""
    path = request.path
    if _VENDOR_PATH.match(path):
        vendor = {"message": body.get("message", ""), "statusCode": status}
        return json_response(vendor, status=status, content_type=_ERROR_TYPE)
    if _FHIR_PATH.match(path):
        return _fhir_json(outcome_for_status(status, str(body.get("message", ""))), status)
    return json_response(body, status=status, content_type=_ERROR_TYPE)


def _fhir_json(body: dict[str, Any], status: int) -> web.Response:
    # Set as a header: aiohttp's content_type= takes no parameters (charset, fhirVersion).
    return web.Response(
        body=orjson.dumps(body), status=status, headers={"Content-Type": _FHIR_TYPE}
    )


@web.middleware
async def error_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except GatewayError as exc:
        if exc.status >= 500:
            log.warning(
                "%s %s -> %d %s [%s]",
                request.method,
                loggable(request.path),
                exc.status,
                exc.message,
                request.get(REQUEST_ID, "-"),
            )
        if _FHIR_PATH.match(request.path) and not _VENDOR_PATH.match(request.path):
            response = _fhir_json(operation_outcome(exc), exc.status)
        else:
            response = render_error(request, exc.status, exc.body())
        response.headers.update(exc.headers)
        return response
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        code = _HTTP_CODES.get(exc.status, "http-error")
        body = {"status": exc.status, "error": code, "message": exc.reason}
        response = render_error(request, exc.status, body)
        if exc.status == 405 and "Allow" in exc.headers:
            response.headers["Allow"] = exc.headers["Allow"]
        return response
    except Exception:
        # A bug of ours: logged with its traceback for us, a plain 500 for the client.
        log.exception(
            "unhandled error on %s %s [%s]",
            request.method,
            loggable(request.path),
            request.get(REQUEST_ID, "-"),
        )
        if request.writer is not None and request.writer.output_size > 0:
            # Part of an answer is out: a second response would corrupt the stream.
            abort_connection(request)
            raise
        body = {"status": 500, "error": "internal-error", "message": "internal error"}
        return render_error(request, 500, body)


# What a decoded path may hold that would let a client write lines of its own into the log
# (CR, LF, NEL, U+2028/9), hide text (other controls) or break the log's encoding (a lone
# surrogate); the backslash too, so that an escape in the log is always ours.
_UNLOGGABLE = re.compile(r"[\x00-\x1f\x7f-\x9f\\\u2028\u2029\ud800-\udfff]")


def _escape(match: re.Match[str]) -> str:
    code = ord(match[0])
    if match[0] == "\\":
        return "\\\\"
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def loggable(text: str) -> str:
    """``text`` (a decoded request path) safe to write in one log line: see _UNLOGGABLE."""
    return _UNLOGGABLE.sub(_escape, text)


class AccessLogger(AbstractAccessLogger):
    """One line per request without the query string: QIDO queries carry patient data. The
    path is written with :func:`loggable`: ``%0D%0A`` in it cannot start a forged line. The
    request id ends the line: it finds the request's AuditEvent (who, which patient)."""

    def log(self, request: web.BaseRequest, response: web.StreamResponse, time_: float) -> None:
        logger = self.logger
        if not logger.isEnabledFor(logging.INFO):
            return
        args = (
            request.remote,
            request.method,
            loggable(request.path),
            response.status,
            response.body_length,
            time_ * 1000,
            request.get(REQUEST_ID, "-"),
        )
        defer(_app_of(request), self._write, args, time.time())

    def _write(self, args: tuple[object, ...], created: float) -> None:
        """The line, stamped with when the answer ended (written up to a few ms later: see
        web/after_answer.py). Made here rather than by logger.info: its search of the caller's
        frame (the line would name aiohttp's, of no use) was a good part of a search's cost."""
        logger = self.logger
        record = logger.makeRecord(
            logger.name, logging.INFO, _NO_FILE, 0, _ACCESS_LINE, args, None, _NO_FUNCTION
        )
        record.created = created
        record.msecs = (created - int(created)) * 1000
        logger.handle(record)


def _app_of(request: web.BaseRequest) -> web.Application | None:
    """The app that routed ``request``; None for one refused before routing."""
    try:
        return request.app  # type: ignore[attr-defined, no-any-return]
    except (AttributeError, AssertionError):
        return None


_ACCESS_LINE = '%s "%s %s" %d %d %.1fms %s'
_NO_FILE = "(unknown file)"  # what logging records when it does not look for the caller
_NO_FUNCTION = "(unknown function)"


class RedactServerErrors(logging.Filter):
    """aiohttp logs a malformed request with its raw request line, query string and all.

    That line may carry patient data (QIDO keys), so it is replaced by a bare notice.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        record.msg = "malformed HTTP request refused (details withheld: may hold patient data)"
        record.args = None
        record.exc_info = None
        record.exc_text = None
        return True
