"""What a check is given: the endpoint under test, a distrustful HTTP client, and test data.

Every request goes through :meth:`Probe.get` (or :meth:`Probe.request`): a timeout and a
body-size limit on each, so an endpoint that stalls or answers without end fails the check
that asked, with a message, instead of hanging the run or filling memory. The endpoint's
answers are data to check, never trusted: parse them with :meth:`Answer.json`, which turns an
unreadable body into :class:`Failed`.

The test study is found by QIDO (or given): :meth:`Probe.fixture` asks once per run and
caches; a check that needs something the endpoint does not hold (a multi-frame image, a
second patient) raises :class:`Skipped`. Other data several checks use (a compressed instance,
the FHIR CapabilityStatement) is asked for once per run too, through :meth:`Probe.memo`.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar, cast
from urllib.parse import urljoin

import aiohttp
import orjson
from multidict import CIMultiDictProxy

from .model import Failed, Skipped

__all__ = ["Answer", "Fixture", "Probe", "Target"]

DICOM_JSON = "application/dicom+json"
T = TypeVar("T")


@dataclass(frozen=True)
class Target:
    """The endpoint under test, as the command line gave it."""

    base_url: str  # the DICOMweb root: QIDO /studies is base_url + "/studies"
    fhir_url: str | None = None  # the FHIR base: ImagingStudy is fhir_url + "/ImagingStudy"
    token: str | None = None  # sent as "Authorization: Bearer" unless a check asks otherwise
    study: str | None = None  # the test study; found by QIDO when None
    patient: str | None = None  # its PatientID; read from the study when None
    timeout: float = 30.0  # seconds, per request (connect to last byte)
    max_body: int = 512 * 1024 * 1024  # bytes read from one answer before giving up


@dataclass(frozen=True)
class Answer:
    """One HTTP answer, read whole (up to the limit)."""

    method: str
    url: str
    status: int
    headers: CIMultiDictProxy[str]
    body: bytes
    truncated: bool = False  # the body passed the limit; the rest was not read

    @property
    def content_type(self) -> str:
        """The media type without parameters, lower-cased ("" when absent)."""
        return self.headers.get("Content-Type", "").split(";", 1)[0].strip().lower()

    def json(self) -> Any:
        """The body as JSON, or Failed naming the URL when it is not JSON."""
        try:
            return orjson.loads(self.body)
        except orjson.JSONDecodeError as exc:
            raise Failed(f"{self.method} {self.url}: the body is not JSON ({exc})") from None

    def expect(self, *statuses: int) -> Answer:
        """Self when the status is one of ``statuses``, else Failed naming what came."""
        if self.status not in statuses:
            wanted = " or ".join(str(s) for s in statuses)
            raise Failed(f"{self.method} {self.url}: status {self.status}, expected {wanted}")
        return self


@dataclass(frozen=True)
class Fixture:
    """The test data the checks use, found on the endpoint itself."""

    patient_id: str
    study: str
    series: str  # a series of ``study`` with at least one image instance
    instance: str  # an image instance of ``series``
    sop_class: str
    frames: int  # NumberOfFrames of ``instance`` (1 when absent)
    study_json: dict[str, Any] = field(default_factory=dict)  # its QIDO study-level answer
    instance_metadata: dict[str, Any] = field(default_factory=dict)  # its WADO-RS metadata


class Probe:
    """The context every check gets (see the module docstring)."""

    def __init__(self, target: Target, session: aiohttp.ClientSession) -> None:
        self.target = target
        self.session = session
        self._fixture: Fixture | None = None
        self._fixture_error: str | None = None
        self._lock = asyncio.Lock()
        self._memo: dict[str, asyncio.Future[Any]] = {}

    def url(self, path: str) -> str:
        """``path`` under the DICOMweb root ("/studies" → base_url + "/studies"); absolute URLs
        are returned as they are."""
        if path.startswith(("http://", "https://")):
            return path
        return self.target.base_url.rstrip("/") + "/" + path.lstrip("/")

    def fhir(self, path: str) -> str:
        """``path`` under the FHIR base; Skipped when no FHIR URL was given."""
        if not self.target.fhir_url:
            raise Skipped("no --fhir-url given")
        return urljoin(self.target.fhir_url.rstrip("/") + "/", path.lstrip("/"))

    async def get(
        self,
        url: str,
        *,
        accept: str | None = None,
        params: dict[str, str] | list[tuple[str, str]] | None = None,
        headers: dict[str, str] | None = None,
        token: str | bool | None = True,
    ) -> Answer:
        """GET ``url`` (a path is taken under the DICOMweb root)."""
        return await self.request(
            "GET", url, accept=accept, params=params, headers=headers, token=token
        )

    async def request(
        self,
        method: str,
        url: str,
        *,
        accept: str | None = None,
        params: dict[str, str] | list[tuple[str, str]] | None = None,
        headers: dict[str, str] | None = None,
        body: bytes | None = None,
        token: str | bool | None = True,
        max_body: int | None = None,
    ) -> Answer:
        """One request, bounded in time and size. ``token``: True sends the run's token (if
        any), False or None sends none, a string sends that one instead. ``accept`` None sends
        no Accept header at all (what a client that names no preference sends)."""
        sent: dict[str, str] = dict(headers or {})
        if accept is not None:
            sent["Accept"] = accept
        bearer = self.target.token if token is True else (token or None)
        if bearer:
            sent.setdefault("Authorization", f"Bearer {bearer}")
        limit = self.target.max_body if max_body is None else max_body
        full = self.url(url)
        timeout = aiohttp.ClientTimeout(total=self.target.timeout)
        try:
            async with self.session.request(
                method,
                full,
                params=params,
                headers=sent,
                data=body,
                timeout=timeout,
                allow_redirects=False,
                skip_auto_headers=() if accept is not None else ("Accept",),
            ) as response:
                chunks: list[bytes] = []
                size = 0
                truncated = False
                async for chunk in response.content.iter_chunked(1 << 16):
                    chunks.append(chunk)
                    size += len(chunk)
                    if size > limit:
                        truncated = True
                        break
                return Answer(
                    method=method,
                    url=str(response.url),
                    status=response.status,
                    headers=response.headers,
                    body=b"".join(chunks),
                    truncated=truncated,
                )
        except TimeoutError:
            raise Failed(
                f"{method} {full}: no complete answer within {self.target.timeout:g} s"
            ) from None
        except aiohttp.ClientError as exc:
            raise Failed(f"{method} {full}: {type(exc).__name__}: {exc}") from None

    async def fixture(self) -> Fixture:
        """The test study, series and instance (found once per run, see the module docstring)."""
        async with self._lock:
            if self._fixture is None and self._fixture_error is None:
                try:
                    self._fixture = await self._discover()
                except (Failed, Skipped) as exc:
                    self._fixture_error = str(exc)
            if self._fixture is None:
                raise Skipped(f"no test study: {self._fixture_error}")
            return self._fixture

    async def memo(self, key: str, factory: Callable[[], Awaitable[T]]) -> T:
        """``factory()`` once per run and ``key``; its result (or its failure) shared by every
        check that asks. Shielded: a check timing out does not cancel it for the others."""
        if key not in self._memo:

            async def run() -> T:
                return await factory()

            self._memo[key] = asyncio.ensure_future(run())
        return cast(T, await asyncio.shield(self._memo[key]))

    async def _discover(self) -> Fixture:
        params = {"StudyInstanceUID": self.target.study} if self.target.study else {"limit": "50"}
        studies = (await self.get("/studies", accept=DICOM_JSON, params=params)).expect(200).json()
        if not isinstance(studies, list) or not studies:
            raise Skipped("QIDO /studies found no study")
        for study_json in studies:
            study = _value(study_json, "0020000D")
            if not study:
                continue
            series_list = (
                (await self.get(f"/studies/{study}/series", accept=DICOM_JSON)).expect(200).json()
            )
            for series_json in series_list or []:
                series = _value(series_json, "0020000E")
                if not series or _value(series_json, "00080060") in ("KO", "SR", "PR", "SEG"):
                    continue
                instances = (
                    (
                        await self.get(
                            f"/studies/{study}/series/{series}/instances", accept=DICOM_JSON
                        )
                    )
                    .expect(200)
                    .json()
                )
                for instance_json in instances or []:
                    instance = _value(instance_json, "00080018")
                    if not instance:
                        continue
                    metadata = (
                        (
                            await self.get(
                                f"/studies/{study}/series/{series}/instances/{instance}/metadata",
                                accept=DICOM_JSON,
                            )
                        )
                        .expect(200)
                        .json()
                    )
                    if not metadata or (
                        "7FE00010" not in metadata[0] and "00280010" not in metadata[0]
                    ):
                        continue  # not an image
                    item = metadata[0]
                    return Fixture(
                        patient_id=self.target.patient or str(_value(study_json, "00100020") or ""),
                        study=study,
                        series=series,
                        instance=instance,
                        sop_class=str(_value(item, "00080016") or ""),
                        frames=int(_value(item, "00280008") or 1),
                        study_json=study_json,
                        instance_metadata=item,
                    )
        raise Skipped("no study with an image instance")


def _value(element_map: Any, tag: str) -> Any:
    """The first Value of ``tag`` in a DICOM JSON object, or None."""
    if not isinstance(element_map, dict):
        return None
    element = element_map.get(tag)
    if not isinstance(element, dict):
        return None
    values = element.get("Value")
    return values[0] if isinstance(values, list) and values else None
