"""FHIR format and version negotiation (FHIR R4 http.html#mime-type, #version-parameter)
against the headers real clients send."""

from __future__ import annotations

import orjson
import pytest
from fhir.resources.parameters import Parameters as ParametersR5
from fhir.resources.R4B.parameters import Parameters as ParametersR4

from ncpeh_dicomweb.errors import BadRequest, NotAcceptable
from ncpeh_dicomweb.fhir.negotiation import (
    DEFAULT_VERSION,
    R4,
    R5,
    SUPPORTED,
    FhirFormat,
    negotiate_fhir,
    versions_parameters,
)
from ncpeh_dicomweb.fhir.outcome import operation_outcome

CURL = "*/*"
BROWSER = "text/html,application/xhtml+xml,application/xml;q=0.9,image/avif,*/*;q=0.8"
# HAPI FHIR's generic client, asking for JSON.
HAPI_JSON = "application/fhir+json;q=1.0, application/json+fhir;q=0.9"
# fhir.js / SMART client.
SMART = "application/fhir+json, application/json;q=0.9"


@pytest.mark.parametrize(
    ("accept", "expected"),
    [
        pytest.param(None, "R4", id="no-accept"),
        pytest.param("", "R4", id="empty-accept"),
        pytest.param(CURL, "R4", id="curl"),
        pytest.param(BROWSER, "R4", id="browser"),
        pytest.param(HAPI_JSON, "R4", id="hapi-client"),
        pytest.param(SMART, "R4", id="smart-client"),
        pytest.param("application/fhir+json", "R4", id="fhir-json"),
        pytest.param("application/json", "R4", id="json"),
        pytest.param("application/*", "R4", id="application-wildcard"),
        pytest.param("application/fhir+json; fhirVersion=4.0", "R4", id="v4.0"),
        pytest.param("application/fhir+json; fhirVersion=4.0.1", "R4", id="v4.0.1"),
        pytest.param("application/fhir+json; fhirVersion=5.0", "R5", id="v5.0"),
        pytest.param("application/fhir+json; fhirVersion=5.0.0", "R5", id="v5.0.0"),
        pytest.param('application/fhir+json; fhirVersion="5.0"', "R5", id="v5.0-quoted"),
        pytest.param("application/fhir+json;fhirversion=5.0", "R5", id="v5.0-lower-name"),
        pytest.param("APPLICATION/FHIR+JSON; FHIRVERSION=5.0", "R5", id="v5.0-upper"),
        pytest.param("application/json; fhirVersion=5.0", "R5", id="json-v5.0"),
        pytest.param("*/*; fhirVersion=5.0", "R5", id="any-v5.0"),
        pytest.param("application/fhir+json; charset=utf-8; fhirVersion=5.0", "R5", id="charset"),
        pytest.param(
            "application/fhir+json; fhirVersion=5.0, application/fhir+json; fhirVersion=4.0;q=0.5",
            "R5",
            id="prefers-r5",
        ),
        pytest.param(
            "application/fhir+json; fhirVersion=4.0;q=0.5, application/fhir+json; fhirVersion=5.0",
            "R5",
            id="prefers-r5-by-q",
        ),
        pytest.param(
            "application/fhir+json; fhirVersion=3.0, application/fhir+json; fhirVersion=5.0;q=0.5",
            "R5",
            id="stu3-else-r5",
        ),
        pytest.param("application/fhir+xml, application/fhir+json;q=0.1", "R4", id="xml-else-json"),
        pytest.param(
            "application/fhir+xml; fhirVersion=5.0, application/fhir+json; q=0.2",
            "R4",
            id="xml-r5-else-json-default",
        ),
    ],
)
def test_accept(accept: str | None, expected: str) -> None:
    assert negotiate_fhir(accept, None).version == expected


@pytest.mark.parametrize(
    ("accept", "why"),
    [
        pytest.param("application/fhir+xml", "no media type", id="fhir-xml"),
        pytest.param("application/xml", "no media type", id="xml"),
        pytest.param("text/html", "no media type", id="html-only"),
        pytest.param("text/turtle", "no media type", id="turtle"),
        pytest.param("application/fhir+json; fhirVersion=3.0", "version 3.0", id="stu3"),
        pytest.param("application/fhir+json; fhirVersion=4.3", "version 4.3", id="r4b"),
        pytest.param("application/fhir+json; fhirVersion=6.0", "version 6.0", id="r6"),
        pytest.param("application/json; fhirVersion=3.0", "version 3.0", id="json-stu3"),
        pytest.param("application/fhir+json; charset=iso-8859-1", "no media type", id="latin1"),
        pytest.param("application/fhir+json;q=0, application/json;q=0", "no media type", id="q0"),
    ],
)
def test_accept_not_acceptable(accept: str, why: str) -> None:
    with pytest.raises(NotAcceptable) as info:
        negotiate_fhir(accept, None)
    error = info.value
    assert error.status == 406
    assert why in error.message
    # Names what is offered: the media type and both versions.
    assert "application/fhir+json" in error.message
    assert "fhirVersion=4.0" in error.message and "fhirVersion=5.0" in error.message
    assert error.detail["accept"] == accept
    assert error.detail["supported"] == list(SUPPORTED)


def test_accept_that_does_not_parse_is_400() -> None:
    with pytest.raises(BadRequest) as info:
        negotiate_fhir("not a media type", None)
    assert info.value.status == 400


@pytest.mark.parametrize(
    ("fmt", "accept", "expected"),
    [
        pytest.param("json", None, "R4", id="json"),
        pytest.param("JSON", None, "R4", id="json-upper"),
        pytest.param(" json ", None, "R4", id="json-spaces"),
        pytest.param("application/json", None, "R4", id="application-json"),
        pytest.param("application/fhir+json", None, "R4", id="fhir-json"),
        pytest.param("application/fhir json", None, "R4", id="fhir-json-plus-decoded-as-space"),
        # _format overrides the media type of Accept ...
        pytest.param("json", "application/fhir+xml", "R4", id="overrides-xml-accept"),
        pytest.param("json", "text/html", "R4", id="overrides-html-accept"),
        pytest.param("json", "not a media type", "R4", id="ignores-unparseable-accept"),
        # ... but the version still comes from Accept when _format does not name one.
        pytest.param("json", "application/fhir+json; fhirVersion=5.0", "R5", id="accept-r5"),
        pytest.param("json", "application/fhir+xml; fhirVersion=5.0", "R5", id="xml-accept-r5"),
        pytest.param(
            "json",
            "application/fhir+json; fhirVersion=3.0, */*; fhirVersion=5.0;q=0.1",
            "R5",
            id="accept-first-served-version",
        ),
        pytest.param("application/fhir+json; fhirVersion=5.0", None, "R5", id="format-r5"),
        pytest.param("application/fhir json;fhirVersion=5.0.0", None, "R5", id="format-r5-plus"),
        pytest.param("json;fhirVersion=5.0", None, "R5", id="short-name-r5"),
        pytest.param(
            "application/fhir+json; fhirVersion=4.0",
            "application/fhir+json; fhirVersion=5.0",
            "R4",
            id="format-version-wins",
        ),
        # An empty _format is no _format.
        pytest.param("", "application/fhir+json; fhirVersion=5.0", "R5", id="empty-format"),
        pytest.param("  ", None, "R4", id="blank-format"),
    ],
)
def test_format_parameter(fmt: str, accept: str | None, expected: str) -> None:
    assert negotiate_fhir(accept, fmt).version == expected


@pytest.mark.parametrize(
    ("fmt", "accept", "why"),
    [
        pytest.param("xml", None, "FHIR XML", id="xml"),
        pytest.param("xml", "application/fhir+json", "FHIR XML", id="xml-over-json-accept"),
        pytest.param("text/xml", None, "FHIR XML", id="text-xml"),
        pytest.param("application/fhir+xml", None, "FHIR XML", id="fhir-xml"),
        pytest.param("application/fhir xml", None, "FHIR XML", id="fhir-xml-plus-decoded"),
        pytest.param("ttl", None, "FHIR TURTLE", id="ttl"),
        pytest.param("text/turtle", None, "FHIR TURTLE", id="turtle"),
        pytest.param("html", None, "FHIR HTML", id="html"),
        pytest.param("yaml", None, "unknown format", id="unknown"),
    ],
)
def test_format_not_acceptable(fmt: str, accept: str | None, why: str) -> None:
    with pytest.raises(NotAcceptable) as info:
        negotiate_fhir(accept, fmt)
    error = info.value
    assert why in error.message
    assert "_format=json" in error.message and "fhirVersion=5.0" in error.message
    # The parameter is named, so the OperationOutcome points at it.
    assert error.detail["parameter"] == "_format"
    assert error.detail["value"] == fmt


@pytest.mark.parametrize(
    ("fmt", "accept", "where"),
    [
        pytest.param("json", "application/fhir+json; fhirVersion=3.0", "accept", id="accept-3.0"),
        pytest.param("application/fhir+json; fhirVersion=6.0", None, "_format", id="format-6.0"),
        pytest.param("json;fhirVersion=4.3", CURL, "_format", id="format-4.3"),
    ],
)
def test_format_with_unserved_version(fmt: str, accept: str | None, where: str) -> None:
    with pytest.raises(NotAcceptable) as info:
        negotiate_fhir(accept, fmt)
    error = info.value
    assert "is not served" in error.message and "fhirVersion=4.0" in error.message
    assert ("parameter" in error.detail) == (where == "_format")


@pytest.mark.parametrize(
    ("fmt", "release", "content_type"),
    [
        (R4, "4.0.1", "application/fhir+json; charset=utf-8; fhirVersion=4.0"),
        (R5, "5.0.0", "application/fhir+json; charset=utf-8; fhirVersion=5.0"),
    ],
)
def test_format_properties(fmt: FhirFormat, release: str, content_type: str) -> None:
    assert fmt.fhir_version == release
    assert fmt.content_type == content_type


def test_json_is_answered_with_the_fhir_media_type() -> None:
    # http.html: the correct FHIR media type SHALL be used, also for application/json.
    assert negotiate_fhir("application/json", None).content_type == R4.content_type
    assert negotiate_fhir(None, "application/json").content_type == R4.content_type


def test_default_is_r4() -> None:
    assert DEFAULT_VERSION == "R4"
    assert negotiate_fhir(None, None) == R4


@pytest.mark.parametrize("model", [ParametersR4, ParametersR5], ids=["R4", "R5"])
def test_versions_operation(model: type[ParametersR4] | type[ParametersR5]) -> None:
    body = versions_parameters()
    model.model_validate(body)
    assert body["parameter"] == [
        {"name": "version", "valueCode": "4.0"},
        {"name": "version", "valueCode": "5.0"},
        {"name": "default", "valueCode": "4.0"},
    ]


# ---- a resource type that exists in R5 only (ImagingSelection)


@pytest.mark.parametrize(
    ("accept", "format_param"),
    [
        (None, None),
        ("*/*", None),
        ("application/json", None),
        ("application/fhir+json", None),
        ("application/fhir+json; fhirVersion=5.0", None),
        ("application/fhir+json; fhirVersion=4.0, application/fhir+json; fhirVersion=5.0", None),
        (None, "json"),
        (None, "application/fhir+json; fhirVersion=5.0"),
    ],
)
def test_r5_only_resources_default_to_r5(accept: str | None, format_param: str | None) -> None:
    assert negotiate_fhir(accept, format_param, versions=("R5",)).version == "R5"


@pytest.mark.parametrize(
    ("accept", "format_param"),
    [
        ("application/fhir+json; fhirVersion=4.0", None),
        ("application/json; fhirVersion=4.0.1", None),
        (None, "application/fhir+json; fhirVersion=4.0"),
    ],
)
def test_r5_only_resources_refuse_an_explicit_r4(
    accept: str | None, format_param: str | None
) -> None:
    with pytest.raises(NotAcceptable, match="exists only in FHIR R5"):
        negotiate_fhir(accept, format_param, versions=("R5",))


@pytest.mark.parametrize(
    ("accept", "format_param"),
    [
        ("application/fhir+json; fhirVersion=\udcff", None),  # b"\xff" as aiohttp decodes it
        ("\udcff/\udcfe", None),
        (None, "\ud800"),
        (None, "json; fhirVersion=\udcff"),
    ],
)
def test_bytes_that_are_not_utf8_are_refused_sendably(
    accept: str | None, format_param: str | None
) -> None:
    """Regression: lone surrogates were echoed in the message and detail of the 400/406, and
    the JSON encoder of the OperationOutcome raised (a 500)."""
    with pytest.raises((BadRequest, NotAcceptable)) as caught:
        negotiate_fhir(accept, format_param)
    orjson.dumps(operation_outcome(caught.value))
    orjson.dumps(caught.value.body())
