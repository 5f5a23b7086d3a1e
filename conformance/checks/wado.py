"""WADO-RS checks (PS3.18 10.4 Retrieve Transaction): study, series and instance retrieve, and
transfer syntaxes. Metadata and URL consistency are in ``wado_metadata``, errors and a real
client in ``wado_errors``, pixel resources (frames, bulk data, rendered, thumbnail) in
``wado_pixels``; the reports list them in that order. The helpers they share are in
``_wado_stream`` (the wire) and ``_wado_common``.

Sections cite the current edition of PS3.18. Instance retrieves are read as a stream (see
``_wado_stream``); each part must be a PS3.10 file. Data found once and used by several checks
(a compressed instance, a multi-frame one) is searched once per run (:meth:`Probe.memo`).
"""

from __future__ import annotations

from ..context import Probe
from ..model import Failed, Level, check
from ._wado_common import (
    ANY,
    EVRLE,
    LOSSLESS,
    OCTETS,
    Stored,
    _int,
    _series_count,
    _series_path,
    _value,
    compressed_instance,
    instance_path,
)
from ._wado_stream import (
    DICOM,
    Part10,
    Streamed,
    _param,
    _ts_name,
    instances_of,
    retrieve_instances,
    stream_parts,
)

__all__: list[str] = []


def _expect_members(
    got: Streamed, parts: list[Part10], study: str, series: str | None, count: int | None
) -> None:
    if not parts:
        raise Failed(f"GET {got.url}: no instance in the answer")
    for p in parts:
        if p.study != study or (series is not None and p.series != series):
            raise Failed(
                f"GET {got.url}: part {p.number} (SOP Instance {p.sop}) is of study {p.study} "
                f"series {p.series}, not the one asked for"
            )
    sops = [p.sop for p in parts]
    if len(set(sops)) != len(sops):
        raise Failed(f"GET {got.url}: an instance comes twice")
    if count is not None and len(parts) != count:
        raise Failed(f"GET {got.url}: {len(parts)} instances, QIDO counts {count}")


@check(
    "wado.study.retrieve",
    section="PS3.18 10.4.1.1.1, 10.4.3.3.1",
    level=Level.MUST,
    title='study as multipart/related; type="application/dicom": every instance, PS3.10 parts',
)
async def study_retrieve(probe: Probe) -> None:
    fx = await probe.fixture()
    count = _value(fx.study_json, "00201208")
    got, parts = await retrieve_instances(probe, f"/studies/{fx.study}")
    _expect_members(got, parts, fx.study, None, _int(count))


@check(
    "wado.series.retrieve",
    section="PS3.18 10.4.1.1.1, 10.4.3.3.1",
    level=Level.MUST,
    title="series retrieve: every instance of the series, PS3.10 parts",
)
async def series_retrieve(probe: Probe) -> None:
    fx = await probe.fixture()
    got, parts = await retrieve_instances(probe, _series_path(fx))
    _expect_members(got, parts, fx.study, fx.series, await _series_count(probe, fx))


@check(
    "wado.instance.retrieve",
    section="PS3.18 10.4.1.1.1, 10.4.3.3.1",
    level=Level.MUST,
    title="instance retrieve: one PS3.10 part, the instance asked for",
)
async def instance_retrieve(probe: Probe) -> None:
    fx = await probe.fixture()
    got, parts = await retrieve_instances(probe, instance_path(fx))
    _expect_members(got, parts, fx.study, fx.series, 1)
    if parts[0].sop != fx.instance:
        raise Failed(f"GET {got.url}: SOP Instance {parts[0].sop}, asked {fx.instance}")


@check(
    "wado.multipart.type-parameter",
    section="PS3.18 8.7.3.5.1, RFC 2387 3.1",
    level=Level.MUST,
    title="multipart answers give type= as a bare media type (its parameters outside it)",
)
async def multipart_type_parameter(probe: Probe) -> None:
    fx = await probe.fixture()
    for path, accept, media_type in (
        (instance_path(fx), DICOM, "application/dicom"),
        (f"{instance_path(fx)}/frames/1", OCTETS, "application/octet-stream"),
    ):
        got = (await stream_parts(probe, path, accept=accept)).expect_ok()
        given = _param(got.content_type, "type", got.url)
        if given is None or given.strip().lower() != media_type:
            raise Failed(
                f"GET {got.url}: Content-Type {got.content_type!r}: type must be {media_type!r} "
                "alone (dcm-multipart = multipart/related; type=dcm-mp-mt-name [dcm-parameters])"
            )


# --------------------------------------------------------------------------------------------
# Transfer syntaxes


async def _default_targets(probe: Probe) -> list[Stored]:
    """The fixture instance (stored form unknown: "") and a compressed one if found."""
    fx = await probe.fixture()
    stored = await compressed_instance(probe)
    return [Stored(instance_path(fx), "")] + ([stored] if stored else [])


@check(
    "wado.instance.default-transfer-syntax",
    section="PS3.18 8.7.3.4, Table 8.7.3-2",
    level=Level.MUST,
    title="no transfer-syntax asked: Explicit VR Little Endian (a compressed instance too)",
)
async def default_transfer_syntax(probe: Probe) -> None:
    for target in await _default_targets(probe):
        got, parts = await retrieve_instances(probe, target.path)
        ts, stored = parts[0].transfer_syntax, target.transfer_syntax
        lossy_kept = bool(stored) and ts == stored and stored not in LOSSLESS
        if ts != EVRLE and not lossy_kept:
            kept = f" (stored as {_ts_name(stored)})" if stored else ""
            raise Failed(
                f"GET {got.url}{kept}: the part is in {_ts_name(ts)}; with no transfer-syntax the "
                f"default is {_ts_name(EVRLE)}"
            )


@check(
    "wado.instance.transfer-syntax-any",
    section="PS3.18 8.7.3.5.2, 10.4.4",
    level=Level.MUST,
    title="transfer-syntax=* is accepted: 200, PS3.10 parts in a transfer syntax the server picks",
)
async def transfer_syntax_any(probe: Probe) -> None:
    for target in await _default_targets(probe):
        await retrieve_instances(probe, target.path, accept=f"{DICOM}; {ANY}")


REQUESTED = (
    "1.2.840.10008.1.2.4.90",  # JPEG 2000 lossless
    "1.2.840.10008.1.2.5",  # RLE lossless
    "1.2.840.10008.1.2.4.50",  # JPEG baseline (lossy, 8-bit only)
    "2.25.1",  # a syntactically valid UID that names no transfer syntax
)


@check(
    "wado.instance.transfer-syntax-requested",
    section="PS3.18 8.7.8, Table 10.4.3-1",
    level=Level.MUST,
    title="a transfer syntax asked for is honoured (200, parts in it) or refused with 406",
)
async def transfer_syntax_requested(probe: Probe) -> None:
    fx = await probe.fixture()
    for ts in REQUESTED:
        accept = f"{DICOM}; transfer-syntax={ts}"
        got = await stream_parts(probe, instance_path(fx), accept=accept)
        if got.status == 406:
            continue
        if got.status != 200:
            said = got.text[:200].decode("utf-8", "replace").strip()
            raise Failed(
                f"GET {got.url} (Accept: {accept}): status {got.status}, expected 200 in that "
                f"transfer syntax or 406 ({said})"
            )
        wrong = [p for p in instances_of(got) if p.transfer_syntax != ts]
        if wrong:
            raise Failed(
                f"GET {got.url} (Accept: {accept}): 200 with a part in "
                f"{_ts_name(wrong[0].transfer_syntax)}, expected {_ts_name(ts)} or 406"
            )


@check(
    "wado.instance.part-transfer-syntax",
    section="PS3.18 8.7.9",
    level=Level.SHOULD,
    title="each part's Content-Type names its transfer syntax, the same as its (0002,0010)",
)
async def part_transfer_syntax(probe: Probe) -> None:
    fx = await probe.fixture()
    got, parts = await retrieve_instances(probe, instance_path(fx))
    for p in parts:
        if p.ts_param is None:
            raise Failed(
                f"GET {got.url}: part {p.number} has no transfer-syntax parameter (its data set is "
                f"{_ts_name(p.transfer_syntax)}); clients must open the file to learn it"
            )
        if p.ts_param != p.transfer_syntax:
            raise Failed(
                f"GET {got.url}: part {p.number} says transfer-syntax={p.ts_param}, its "
                f"(0002,0010) is {p.transfer_syntax}"
            )
