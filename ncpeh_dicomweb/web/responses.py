"""Response helpers shared by the handlers."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import orjson
from aiohttp import web

from ..dicomweb import multipart
from ..dicomweb.dicomxml import to_native_xml
from ..dicomweb.media import DICOM_XML, DICOM_XML_MULTIPART
from ..errors import BackendError, warning_value

__all__ = ["dicom_response", "json_response", "warning_value"]


def json_response(
    body: Any, *, content_type: str, status: int = 200, warnings: Iterable[str] = ()
) -> web.Response:
    response = web.Response(body=orjson.dumps(body), status=status, content_type=content_type)
    for text in warnings:
        response.headers.add("Warning", warning_value(text))
    return response


def dicom_response(
    datasets: list[dict[str, Any]],
    *,
    media_type: str,
    warnings: Iterable[str] = (),
    headers: dict[str, str] | None = None,
) -> web.Response:
    """QIDO results or metadata in the negotiated media type: DICOM JSON (PS3.18 F.2), or
    ``multipart/related; type="application/dicom+xml"`` with one Native DICOM Model document
    per dataset (PS3.18 F.3, PS3.19 A)."""
    if media_type != DICOM_XML_MULTIPART:
        response = json_response(datasets, content_type=media_type, warnings=warnings)
    else:
        boundary = multipart.new_boundary()
        pieces: list[bytes] = []
        try:
            for number, dataset in enumerate(datasets):
                head = multipart.part_header(
                    boundary, {"Content-Type": DICOM_XML}, first=number == 0
                )
                pieces += (head, to_native_xml(dataset))
        except ValueError:
            raise BackendError("the PACS answered with data that is not DICOM JSON") from None
        pieces.append(multipart.closing_delimiter(boundary, empty=not datasets))
        response = web.Response(body=b"".join(pieces))
        response.headers["Content-Type"] = multipart.content_type(DICOM_XML, boundary)
        for text in warnings:
            response.headers.add("Warning", warning_value(text))
    if headers:
        response.headers.update(headers)
    return response
