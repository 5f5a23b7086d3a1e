"""Response helpers shared by the handlers."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import orjson
from aiohttp import web

from ..errors import warning_value

__all__ = ["json_response", "warning_value"]


def json_response(
    body: Any, *, content_type: str, status: int = 200, warnings: Iterable[str] = ()
) -> web.Response:
    response = web.Response(body=orjson.dumps(body), status=status, content_type=content_type)
    for text in warnings:
        response.headers.add("Warning", warning_value(text))
    return response
