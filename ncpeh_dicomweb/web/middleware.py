"""Turns every failure into a JSON answer with the right status; never a traceback."""

from __future__ import annotations

import logging

from aiohttp import web
from aiohttp.abc import AbstractAccessLogger
from aiohttp.typedefs import Handler

from ..errors import GatewayError
from .keys import abort_connection
from .responses import json_response

__all__ = ["AccessLogger", "RedactServerErrors", "error_middleware"]

log = logging.getLogger("ncpeh_dicomweb.web")

_ERROR_TYPE = "application/json"
# aiohttp's own HTTP errors (unknown route, wrong method, ...) get our body too.
_HTTP_CODES = {404: "not-found", 405: "method-not-allowed", 413: "payload-too-large"}


@web.middleware
async def error_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except GatewayError as exc:
        if exc.status >= 500:
            log.warning("%s %s -> %d %s", request.method, request.path, exc.status, exc.message)
        response = json_response(exc.body(), status=exc.status, content_type=_ERROR_TYPE)
        response.headers.update(exc.headers)
        return response
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        code = _HTTP_CODES.get(exc.status, "http-error")
        body = {"status": exc.status, "error": code, "message": exc.reason}
        response = json_response(body, status=exc.status, content_type=_ERROR_TYPE)
        if exc.status == 405 and "Allow" in exc.headers:
            response.headers["Allow"] = exc.headers["Allow"]
        return response
    except Exception:
        # A bug of ours: logged with its traceback for us, a plain 500 for the client.
        log.exception("unhandled error on %s %s", request.method, request.path)
        if request.writer is not None and request.writer.output_size > 0:
            # Part of an answer is out: a second response would corrupt the stream.
            abort_connection(request)
            raise
        body = {"status": 500, "error": "internal-error", "message": "internal error"}
        return json_response(body, status=500, content_type=_ERROR_TYPE)


class AccessLogger(AbstractAccessLogger):
    """One line per request without the query string: QIDO queries carry patient data."""

    def log(self, request: web.BaseRequest, response: web.StreamResponse, time_: float) -> None:
        self.logger.info(
            '%s "%s %s" %d %d %.1fms',
            request.remote,
            request.method,
            request.path,
            response.status,
            response.body_length,
            time_ * 1000,
        )


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
