"""WADO-RS error answers (PS3.18 Table 10.4.3-1: unknown and wrong-parent UIDs, malformed UIDs,
406) and a real client's round trip (dicomweb-client). Registered after ``wado_metadata``, so
the reports keep their order: retrieve, transfer syntaxes, metadata, URLs, errors, client.
"""

from __future__ import annotations

import asyncio
import uuid
import warnings

from ..context import Fixture, Probe
from ..model import Failed, Level, check
from ._wado_common import DICOM_JSON, _value, instance_path
from ._wado_stream import DICOM

__all__: list[str] = []


# --------------------------------------------------------------------------------------------
# Errors (PS3.18 Table 10.4.3-1)


def _unknown_uid() -> str:
    return f"2.25.{uuid.uuid4().int}"  # PS3.5 B.2: a UID no one has used


async def _expect_status(probe: Probe, path: str, accept: str, *wanted: int) -> None:
    answer = await probe.request("GET", path, accept=accept, max_body=64 * 1024)
    if answer.status not in wanted:
        expected = " or ".join(map(str, wanted))
        raise Failed(
            f"GET {answer.url} (Accept: {accept}): status {answer.status}, expected {expected}"
        )


@check(
    "wado.errors.unknown-study",
    section="PS3.18 Table 10.4.3-1",
    level=Level.MUST,
    title="an unknown Study Instance UID: 404 (retrieve and metadata)",
)
async def errors_unknown_study(probe: Probe) -> None:
    unknown = _unknown_uid()
    await _expect_status(probe, f"/studies/{unknown}", DICOM, 404)
    await _expect_status(probe, f"/studies/{unknown}/metadata", DICOM_JSON, 404)


@check(
    "wado.errors.wrong-parent",
    section="PS3.18 Table 10.4.3-1",
    level=Level.MUST,
    title="a known instance under an unknown series (or series under unknown study): 404",
)
async def errors_wrong_parent(probe: Probe) -> None:
    fx = await probe.fixture()
    unknown = _unknown_uid()
    await _expect_status(
        probe,
        f"/studies/{fx.study}/series/{unknown}/instances/{fx.instance}/metadata",
        DICOM_JSON,
        404,
    )
    await _expect_status(
        probe, f"/studies/{fx.study}/series/{unknown}/instances/{fx.instance}", DICOM, 404
    )
    await _expect_status(probe, f"/studies/{unknown}/series/{fx.series}/metadata", DICOM_JSON, 404)


@check(
    "wado.errors.malformed-uid",
    section="PS3.18 Table 10.4.3-1, PS3.5 9.1",
    level=Level.SHOULD,
    title="a malformed UID (1.2.abc) in the path: 400 (or 404), never 200 or 5xx",
)
async def errors_malformed_uid(probe: Probe) -> None:
    await _expect_status(probe, "/studies/1.2.abc", DICOM, 400, 404)
    await _expect_status(probe, "/studies/1.2.abc/metadata", DICOM_JSON, 400, 404)


@check(
    "wado.errors.not-acceptable",
    section="PS3.18 8.7.8.1, Table 10.4.3-1",
    level=Level.MUST,
    title="Accept: application/pdf on an image instance and its metadata: 406",
)
async def errors_not_acceptable(probe: Probe) -> None:
    fx = await probe.fixture()
    await _expect_status(probe, instance_path(fx), "application/pdf", 406)
    await _expect_status(probe, f"{instance_path(fx)}/metadata", "application/pdf", 406)


# --------------------------------------------------------------------------------------------
# A real client


@check(
    "wado.client.dicomweb-client",
    section="PS3.18 10.4 (dicomweb-client 0.61)",
    level=Level.SHOULD,
    title="dicomweb-client retrieve_instance and retrieve_series_metadata work",
)
async def dicomweb_client(probe: Probe) -> None:
    fx = await probe.fixture()
    limit = probe.target.timeout
    try:
        problem = await asyncio.wait_for(
            asyncio.to_thread(_client_round, probe.target.base_url, probe.target.token, limit, fx),
            timeout=3 * limit,
        )
    except TimeoutError:
        raise Failed(f"dicomweb-client did not finish within {3 * limit:g} s") from None
    if problem:
        raise Failed(problem)


def _client_round(base: str, token: str | None, timeout: float, fx: Fixture) -> str | None:
    """The two calls in a thread (dicomweb-client is synchronous); a problem, or None."""
    from dicomweb_client.api import DICOMwebClient

    headers = {"Authorization": f"Bearer {token}"} if token else None
    client = DICOMwebClient(url=base, headers=headers, timeout=timeout)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            data = client.retrieve_instance(fx.study, fx.series, fx.instance)
        except Exception as exc:
            return f"retrieve_instance: {type(exc).__name__}: {exc}"
        if str(data.get("SOPInstanceUID", "")) != fx.instance:
            return f"retrieve_instance gave SOP Instance {data.get('SOPInstanceUID')!s}"
        try:
            metadata = client.retrieve_series_metadata(fx.study, fx.series)
        except Exception as exc:
            return f"retrieve_series_metadata: {type(exc).__name__}: {exc}"
    if not isinstance(metadata, list) or not any(
        _value(item, "00080018") == fx.instance for item in metadata
    ):
        return "retrieve_series_metadata: the fixture instance is not in the series metadata"
    return None
