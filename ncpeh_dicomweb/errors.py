"""The gateway's error tree. Handlers raise these; one middleware renders them.

Every error carries its HTTP status, a short machine-readable ``code`` and a
human message that never names an internal host, URL or AE title::

    GatewayError                      (500, never raised for a backend fault)
    ├── BadRequest                    400
    │   ├── InvalidQuery              400  malformed QIDO key or value
    │   └── InvalidUID                400  not digits-and-dots, or > 64 chars
    ├── Unauthorized                  401
    ├── Forbidden                     403
    ├── NotFound                      404  unknown site, route, or UID
    ├── NotAcceptable                 406  no acceptable media type / transfer syntax
    ├── Gone                          410  known but no longer available
    ├── PayloadTooLarge               413
    ├── UriTooLong                    414
    ├── TooManyRequests               429  a client's concurrent retrievals over the limit
    ├── UpstreamRejected              (the PACS's own 4xx, passed on with its meaning)
    └── BackendError                  502  the PACS answered wrongly or failed
        ├── BackendUnreachable        502  connection refused / DNS / reset
        ├── BackendBusy               503  with Retry-After
        └── BackendTimeout            504
"""

from __future__ import annotations

from collections.abc import Mapping

__all__ = [
    "BackendBusy",
    "BackendError",
    "BackendTimeout",
    "BackendUnreachable",
    "BadRequest",
    "Forbidden",
    "GatewayError",
    "Gone",
    "InvalidQuery",
    "InvalidUID",
    "MethodNotAllowed",
    "NotAcceptable",
    "NotFound",
    "PayloadTooLarge",
    "TooManyRequests",
    "Unauthorized",
    "Unprocessable",
    "UnsupportedMediaType",
    "UpstreamRejected",
    "UriTooLong",
    "sendable",
    "warning_value",
]


def warning_value(text: str) -> str:
    """A ``Warning: 299`` header value (RFC 7234 5.5, as PS3.18 8.3.3.1 uses it)."""
    quoted = text.replace("\\", "\\\\").replace('"', '\\"')
    return f'299 ncpeh-dicomweb "{quoted}"'


def sendable(text: str) -> str:
    """``text`` as it can be sent in a JSON body (UTF-8): a lone surrogate, which is what a
    header byte that is not UTF-8 becomes once aiohttp decodes it (``surrogateescape``), is
    written as its escape ``\\udcff``; anything else is kept."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return text.encode("utf-8", "backslashreplace").decode("utf-8")
    return text


def _sendable_value(value: object) -> object:
    if isinstance(value, str):
        return sendable(value)
    if isinstance(value, list):
        return [_sendable_value(v) for v in value]
    if isinstance(value, tuple):
        return tuple(_sendable_value(v) for v in value)
    if isinstance(value, Mapping):
        return {k: _sendable_value(v) for k, v in value.items()}
    return value


class GatewayError(Exception):
    """Base of all errors the gateway answers with a status code."""

    status: int = 500
    code: str = "internal-error"

    def __init__(
        self,
        message: str,
        *,
        detail: Mapping[str, object] | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        message = sendable(message)
        super().__init__(message)
        self.message = message
        self.detail: dict[str, object] = {k: _sendable_value(v) for k, v in (detail or {}).items()}
        self.headers: dict[str, str] = dict(headers or {})

    def body(self) -> dict[str, object]:
        """The JSON body sent to the client."""
        out: dict[str, object] = {
            "status": self.status,
            "error": self.code,
            "message": self.message,
        }
        if self.detail:
            out["detail"] = self.detail
        return out


class BadRequest(GatewayError):
    status = 400
    code = "bad-request"


class InvalidQuery(BadRequest):
    code = "invalid-query"


class InvalidUID(BadRequest):
    code = "invalid-uid"


class Unauthorized(GatewayError):
    status = 401
    code = "unauthorized"


class Forbidden(GatewayError):
    status = 403
    code = "forbidden"


class NotFound(GatewayError):
    status = 404
    code = "not-found"


class MethodNotAllowed(GatewayError):
    """The resource exists but does not take this method (a PACS-owned selection's DELETE)."""

    status = 405
    code = "method-not-allowed"


class NotAcceptable(GatewayError):
    status = 406
    code = "not-acceptable"


class Gone(GatewayError):
    status = 410
    code = "gone"


class PayloadTooLarge(GatewayError):
    status = 413
    code = "payload-too-large"


class UnsupportedMediaType(GatewayError):
    status = 415
    code = "unsupported-media-type"


class Unprocessable(GatewayError):
    """Well-formed content the gateway cannot accept (a selection of instances not in the PACS)."""

    status = 422
    code = "unprocessable"


class TooManyRequests(GatewayError):
    """A client over its share (concurrent retrievals); sent with ``Retry-After``."""

    status = 429
    code = "too-many-requests"


class UriTooLong(GatewayError):
    status = 414
    code = "uri-too-long"


class UpstreamRejected(GatewayError):
    """The PACS refused the request with a 4xx of its own; its status is kept."""

    code = "rejected-by-pacs"

    def __init__(self, status: int, message: str, **kwargs: object) -> None:
        super().__init__(message, **kwargs)  # type: ignore[arg-type]
        self.status = status


class BackendError(GatewayError):
    status = 502
    code = "bad-gateway"


class BackendUnreachable(BackendError):
    code = "pacs-unreachable"


class BackendBusy(BackendError):
    status = 503
    code = "pacs-busy"


class BackendTimeout(BackendError):
    status = 504
    code = "pacs-timeout"
