from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest

from ncpeh_dicomweb.cli import main
from ncpeh_dicomweb.config import (
    ConfigError,
    check_exposure,
    is_loopback,
    load_settings,
    parse_dimse_address,
    settings_from_mapping,
)
from ncpeh_dicomweb.security.scopes import Interaction
from tests.unit.test_security_tokens import ec_key, jwks_document
from tests.unit.test_tls import CLIENT_SUBJECT, KEY_PASSWORD, Pki, make_pki

ROOT = Path(__file__).resolve().parents[2]


def _site(**extra: Any) -> dict[str, Any]:
    return {"id": "central", "url": "http://pacs:8042/dicom-web/", **extra}


def test_minimal_settings_take_defaults() -> None:
    settings = settings_from_mapping({"sites": [_site()]}, {})
    assert settings.default_site == "central"
    site = settings.site("central")
    assert site is not None and site.url == "http://pacs:8042/dicom-web"  # no trailing slash
    assert settings.limits.qido_max_results == 1000
    assert settings.site("other") is None


def test_secrets_come_from_the_environment() -> None:
    raw = {"sites": [_site(auth="basic", username="gw")]}
    settings = settings_from_mapping(raw, {"NCPEH_SITE_CENTRAL_PASSWORD": "s3cret"})
    site = settings.sites[0]
    assert site.password == "s3cret"
    assert "s3cret" not in repr(settings)


@pytest.mark.parametrize(
    ("raw", "names"),
    [
        ({}, "sites"),
        ({"sites": [_site(url="ftp://pacs")]}, "sites[0].url"),
        ({"sites": [_site(url=None)]}, "sites[0].url"),
        ({"sites": [_site(id="bad id!")]}, "sites[0].id"),
        ({"sites": [_site(kind="carrier-pigeon")]}, "sites[0].kind"),
        ({"sites": [_site(read_timeout=-1)]}, "sites[0].read_timeout"),
        ({"sites": [_site(max_connections=0)]}, "sites[0].max_connections"),
        ({"sites": [_site(auth="basic")]}, "sites[0].username"),
        ({"sites": [_site(auth="bearer")]}, "sites[0].token"),
        ({"sites": [_site(colour="blue")]}, "sites[0].colour"),
        ({"sites": [_site(), _site()]}, "duplicate"),
        ({"sites": [_site()], "default_site": "nope"}, "default_site"),
        ({"sites": [_site()], "public_url": "not a url"}, "public_url"),
        ({"sites": [_site()], "server": {"port": 70000}}, "server.port"),
        ({"sites": [_site()], "limits": {"qido_max_results": 0}}, "limits.qido_max_results"),
        ({"sites": [_site()], "typo": 1}, "typo"),
    ],
)
def test_bad_values_name_the_key(raw: dict[str, Any], names: str) -> None:
    with pytest.raises(ConfigError, match=names.replace("[", r"\[").replace("]", r"\]")):
        settings_from_mapping(raw, {})


def test_example_config_is_valid() -> None:
    settings = load_settings(
        ROOT / "examples" / "gateway.toml", {"NCPEH_SITE_CENTRAL_PASSWORD": "x"}
    )
    assert settings.sites[0].id == "central"


def test_missing_and_broken_files(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not found"):
        load_settings(tmp_path / "none.toml", {})
    broken = tmp_path / "broken.toml"
    broken.write_text("sites = [")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_settings(broken, {})


def test_dimse_site_settings() -> None:
    raw = {"sites": [{"id": "r", "kind": "dimse", "host": "pacs", "called_aet": "REGPACS"}]}
    site = settings_from_mapping(raw, {}).sites[0]
    assert site.kind == "dimse"
    assert (site.port, site.calling_aet, site.retrieve) == (104, "NCPEH-GW", "c-get")
    assert site.native_dimse is True  # the gateway's own C-GET association unless told
    raw["sites"][0]["native_dimse"] = False
    assert settings_from_mapping(raw, {}).sites[0].native_dimse is False


@pytest.mark.parametrize(
    ("extra", "names"),
    [
        ({"called_aet": "A" * 17}, "called_aet"),
        ({"called_aet": "BAD\\AET"}, "called_aet"),
        ({"retrieve": "c-teleport"}, "retrieve"),
        ({"url": "http://x"}, "url"),  # a DICOMweb key on a DIMSE site
        ({"cache_max_bytes": 10}, "cache_max_bytes"),
        ({"native_dimse": "yes"}, "native_dimse"),
    ],
)
def test_bad_dimse_values_name_the_key(extra: dict[str, Any], names: str) -> None:
    site = {"id": "r", "kind": "dimse", "host": "pacs", "called_aet": "REGPACS", **extra}
    with pytest.raises(ConfigError, match=names):
        settings_from_mapping({"sites": [site]}, {})


def test_pacs_dimse_flag() -> None:
    assert parse_dimse_address("ORTHANC@127.0.0.1:4242") == ("ORTHANC", "127.0.0.1", 4242)
    for bad in ("ORTHANC@127.0.0.1", "127.0.0.1:4242", "@h:1", "A@h:x"):
        with pytest.raises(ConfigError, match="pacs-dimse"):
            parse_dimse_address(bad)


def test_cors_origins_and_trusted_proxies() -> None:
    server = {"cors_origins": ["HTTPS://Viewer.Example:8443/", "*"], "trusted_proxies": ["::1"]}
    settings = settings_from_mapping({"server": server, "sites": [_site()]}, {})
    assert settings.cors_origins == ("https://viewer.example:8443", "*")
    assert settings.trusted_proxies == ("::1/128",)
    assert settings_from_mapping({"sites": [_site()]}, {}).cors_origins == ()


@pytest.mark.parametrize(
    ("server", "name"),
    [
        ({"cors_origins": ["viewer.example"]}, "server.cors_origins"),
        ({"cors_origins": ["https://viewer.example/path"]}, "server.cors_origins"),
        ({"cors_origins": "https://viewer.example"}, "server.cors_origins"),
        ({"trusted_proxies": ["proxy.local"]}, "server.trusted_proxies"),
        ({"trusted_proxies": [1]}, "server.trusted_proxies"),
    ],
)
def test_bad_cors_and_proxy_settings(server: dict[str, Any], name: str) -> None:
    with pytest.raises(ConfigError, match=name):
        settings_from_mapping({"server": server, "sites": [_site()]}, {})


def test_request_header_timeout() -> None:
    assert settings_from_mapping({"sites": [_site()]}, {}).request_header_timeout == 15.0
    raw = {"server": {"request_header_timeout": 2.5}, "sites": [_site()]}
    assert settings_from_mapping(raw, {}).request_header_timeout == 2.5


@pytest.mark.parametrize("value", [0, 0.5, 3601, "15", True])
def test_bad_request_header_timeout(value: object) -> None:
    raw = {"server": {"request_header_timeout": value}, "sites": [_site()]}
    with pytest.raises(ConfigError, match=r"server\.request_header_timeout"):
        settings_from_mapping(raw, {})


def test_state_store_settings() -> None:
    settings = settings_from_mapping({"sites": [_site()]}, {})
    assert (settings.state_path, settings.database_url) == ("var/ncpeh-state.sqlite3", None)
    url = "postgresql://gw:s3cret@db.internal:5432/ncpeh"
    raw = {"sites": [_site()], "state": {"sqlite": "/srv/state.db", "database_url": url}}
    settings = settings_from_mapping(raw, {})
    assert (settings.state_path, settings.database_url) == ("/srv/state.db", url)
    assert "s3cret" not in repr(settings)
    # The environment overrides the file (a URL may hold a password); empty means unset.
    other = "postgres://gw@db2/ncpeh"
    assert settings_from_mapping(raw, {"NCPEH_DATABASE_URL": other}).database_url == other
    assert settings_from_mapping(raw, {"NCPEH_DATABASE_URL": ""}).database_url == url
    plain = {"sites": [_site()]}
    assert settings_from_mapping(plain, {"NCPEH_DATABASE_URL": other}).database_url == other


@pytest.mark.parametrize(
    ("state", "env", "names"),
    [
        ({"database_url": "mysql://db/x"}, {}, "state.database_url"),
        ({"database_url": ""}, {}, "state.database_url"),
        ({"database_url": 5}, {}, "state.database_url"),
        ({"database_url": "postgresql://db:port/x"}, {}, "state.database_url"),
        ({}, {"NCPEH_DATABASE_URL": "sqlite:///x"}, "NCPEH_DATABASE_URL"),
        ({"postgres": "x"}, {}, "state.postgres"),
    ],
)
def test_bad_state_values_name_the_key(
    state: dict[str, Any], env: dict[str, str], names: str
) -> None:
    with pytest.raises(ConfigError, match=names):
        settings_from_mapping({"sites": [_site()], "state": state}, env)


def test_database_url_flag(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("NCPEH_CONFIG", raising=False)
    monkeypatch.delenv("NCPEH_DATABASE_URL", raising=False)
    base = ["check-config", "--pacs-dicomweb", "http://pacs:8042/dicom-web"]
    assert main([*base, "--database-url", "postgresql://gw:s3cret@db/ncpeh"]) == 0
    assert main([*base, "--database-url", "mysql://gw:s3cret@db/ncpeh"]) == 2
    err = capsys.readouterr().err
    assert "--database-url: must be a URL such as postgresql://" in err and "s3cret" not in err


# ---------------------------------------------------------------- [auth] and the start-up rule

ISSUER, AUDIENCE = "https://idp.example.org", "https://ncp.example.org/imaging"
JWKS_URL = "https://idp.example.org/jwks.json"


def _auth(**auth: Any) -> dict[str, Any]:
    return {"sites": [_site()], "auth": auth}


@pytest.fixture
def jwks_file(tmp_path: Path) -> Path:
    path = tmp_path / "jwks.json"
    path.write_bytes(jwks_document(ec_key("k1")))
    return path


def test_auth_is_off_without_a_key_source() -> None:
    auth = settings_from_mapping({"sites": [_site()]}, {}).auth
    assert (auth.active, auth.enabled, auth.key_source) == (False, None, None)
    assert auth.algorithms == ("RS256", "PS256", "ES256", "EdDSA")
    assert (auth.leeway_seconds, auth.jwks_min_refresh_seconds) == (60.0, 30.0)


def test_auth_with_a_key_source(jwks_file: Path) -> None:
    auth = settings_from_mapping(
        _auth(jwks_url=JWKS_URL, issuer=ISSUER, audience=AUDIENCE), {}
    ).auth
    assert auth.active and auth.jwks_url == JWKS_URL and auth.audience == (AUDIENCE,)
    auth = settings_from_mapping(
        _auth(
            jwks_file=str(jwks_file),
            issuer=ISSUER,
            audience=[AUDIENCE, "other"],
            algorithms=["ES256"],
            leeway_seconds=5,
            jwks_min_refresh_seconds=0.5,
        ),
        {},
    ).auth
    assert auth.active and auth.jwks_file == str(jwks_file.resolve())
    assert auth.audience == (AUDIENCE, "other") and auth.algorithms == ("ES256",)
    assert (auth.leeway_seconds, auth.jwks_min_refresh_seconds) == (5.0, 0.5)
    off = _auth(enabled=False, jwks_url=JWKS_URL, issuer=ISSUER, audience=AUDIENCE)
    assert not settings_from_mapping(off, {}).auth.active


def test_required_scopes_default_and_configured() -> None:
    auth = settings_from_mapping({"sites": [_site()]}, {}).auth
    assert auth.required_scope(Interaction.DICOMWEB) == "system/ImagingStudy.rs"
    assert auth.required_scope(Interaction.IMAGING_STUDY_READ) == "system/ImagingStudy.rs"
    assert auth.required_scope(Interaction.PATIENT_READ) == "system/Patient.r"
    assert auth.required_scope(Interaction.IMAGING_SELECTION_CREATE) == (
        "system/ImagingSelection.c"
    )
    assert auth.required_scope(Interaction.PUBLIC) is None
    assert auth.required_scope(Interaction.AUTHENTICATED) is None
    raw = _auth(
        dicomweb_scope="dicomweb/read",
        scopes={"imaging_study_search": "user/ImagingStudy.rs", "endpoint_read": "x/y"},
    )
    auth = settings_from_mapping(raw, {}).auth
    assert auth.required_scope(Interaction.DICOMWEB) == "dicomweb/read"
    assert auth.required_scope(Interaction.IMAGING_STUDY_SEARCH) == "user/ImagingStudy.rs"
    assert auth.required_scope(Interaction.IMAGING_STUDY_READ) == "system/ImagingStudy.rs"
    assert auth.required_scope(Interaction.ENDPOINT_READ) == "x/y"


@pytest.mark.parametrize(
    ("auth", "names"),
    [
        ({"enabled": True}, "auth.enabled"),
        ({"enabled": "yes"}, "auth.enabled"),
        ({"jwks_url": JWKS_URL, "audience": AUDIENCE}, "auth.issuer"),
        ({"jwks_url": JWKS_URL, "issuer": ISSUER}, "auth.audience"),
        ({"jwks_url": JWKS_URL, "issuer": ISSUER, "audience": []}, "auth.audience"),
        ({"jwks_url": JWKS_URL, "issuer": ISSUER, "audience": [""]}, "auth.audience"),
        ({"jwks_url": "ftp://idp/jwks", "issuer": ISSUER, "audience": AUDIENCE}, "auth.jwks_url"),
        ({"jwks_file": "/nonexistent/jwks.json"}, "auth.jwks_file"),
        ({"algorithms": ["HS256"]}, "auth.algorithms: 'HS256' is not allowed"),
        ({"algorithms": ["none"]}, "auth.algorithms: 'none' is not allowed"),
        ({"algorithms": []}, "auth.algorithms"),
        ({"algorithms": "RS256"}, "auth.algorithms"),
        ({"leeway_seconds": -1}, "auth.leeway_seconds"),
        ({"leeway_seconds": 3600}, "auth.leeway_seconds"),
        ({"jwks_min_refresh_seconds": 0}, "auth.jwks_min_refresh_seconds"),
        ({"dicomweb_scope": "two words"}, "auth.dicomweb_scope"),
        ({"dicomweb_scope": ""}, "auth.dicomweb_scope"),
        ({"scopes": {"imaging_study_read": 'a"b'}}, "auth.scopes.imaging_study_read"),
        ({"scopes": {"dicomweb": "x"}}, "auth.scopes.dicomweb"),
        ({"scopes": {"teleport": "x"}}, "auth.scopes.teleport"),
        ({"scopes": "x"}, "scopes"),
        ({"realm": "x"}, "auth.realm"),
    ],
)
def test_bad_auth_values_name_the_key(auth: dict[str, Any], names: str) -> None:
    with pytest.raises(ConfigError, match=re.escape(names)):
        settings_from_mapping(_auth(**auth), {})


def test_both_key_sources_and_a_file_without_keys(jwks_file: Path, tmp_path: Path) -> None:
    both = _auth(jwks_file=str(jwks_file), jwks_url=JWKS_URL, issuer=ISSUER, audience=AUDIENCE)
    with pytest.raises(ConfigError, match="not both"):
        settings_from_mapping(both, {})
    empty = tmp_path / "empty.json"
    empty.write_text('{"keys": [{"kty": "oct", "k": "c2VjcmV0"}]}')
    with pytest.raises(ConfigError, match=r"auth.jwks_file: .* no usable signature key"):
        settings_from_mapping(_auth(jwks_file=str(empty)), {})
    empty.write_text("not json")
    with pytest.raises(ConfigError, match=r"auth.jwks_file: .*not JSON"):
        settings_from_mapping(_auth(jwks_file=str(empty)), {})


@pytest.mark.parametrize(
    ("host", "loopback"),
    [
        ("127.0.0.1", True),
        ("127.1.2.3", True),
        ("::1", True),
        ("[::1]", True),
        ("localhost", True),
        ("LOCALHOST", True),
        ("0.0.0.0", False),
        ("::", False),
        ("", False),
        ("10.0.0.5", False),
        ("gateway.example.org", False),
        ("localhost.example.org", False),
    ],
)
def test_is_loopback(host: str, loopback: bool) -> None:
    assert is_loopback(host) is loopback


def test_exposure_rule(jwks_file: Path) -> None:
    def settings(host: str, **auth: Any) -> Any:
        return settings_from_mapping({**_auth(**auth), "server": {"host": host}}, {})

    warning = check_exposure(settings("127.0.0.1"))
    assert warning is not None and "NO AUTHENTICATION" in warning and "loopback only" in warning
    with pytest.raises(ConfigError, match=r"server.host: '0.0.0.0' is not a loopback address"):
        check_exposure(settings("0.0.0.0"))
    off = check_exposure(settings("0.0.0.0", enabled=False))
    assert off is not None and "SWITCHED OFF" in off
    keys = {"jwks_file": str(jwks_file), "issuer": ISSUER, "audience": AUDIENCE}
    assert check_exposure(settings("0.0.0.0", **keys)) is None
    plain = {"jwks_url": "http://idp.example.org/jwks", "issuer": ISSUER, "audience": AUDIENCE}
    warning = check_exposure(settings("0.0.0.0", **plain))
    assert warning is not None and "plain http" in warning
    plain["jwks_url"] = "http://127.0.0.1:9999/jwks"
    assert check_exposure(settings("0.0.0.0", **plain)) is None


def test_cli_refuses_a_public_address_without_keys(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, jwks_file: Path
) -> None:
    monkeypatch.delenv("NCPEH_CONFIG", raising=False)
    base = ["check-config", "--pacs-dicomweb", "http://pacs:8042/dicom-web"]
    assert main(base) == 0
    assert "auth OFF" in capsys.readouterr().out
    assert main([*base, "--host", "0.0.0.0"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "configuration error: server.host: '0.0.0.0'" in err
    keys = ["--jwks", str(jwks_file), "--issuer", ISSUER, "--audience", AUDIENCE]
    assert main([*base, "--host", "0.0.0.0", *keys]) == 0
    assert f"auth bearer tokens from {jwks_file.resolve()}" in capsys.readouterr().out
    assert main([*base, "--jwks", JWKS_URL, "--issuer", ISSUER, "--audience", "a"]) == 0
    assert main([*base, "--jwks", str(jwks_file), "--audience", AUDIENCE]) == 2
    assert "auth.issuer: required" in capsys.readouterr().err
    assert main([*base, "--jwks", "/nonexistent.json", "--issuer", ISSUER]) == 2
    assert "--jwks: cannot read" in capsys.readouterr().err


def test_cli_flags_override_the_file(tmp_path: Path, jwks_file: Path) -> None:
    config = tmp_path / "gateway.toml"
    config.write_text(
        '[server]\nhost = "0.0.0.0"\n[auth]\nenabled = false\n'
        '[[sites]]\nid = "a"\nurl = "http://pacs/dicom-web"\n'
    )
    assert main(["check-config", "--config", str(config)]) == 0  # off, explicitly
    flags = ["--jwks", str(jwks_file), "--issuer", ISSUER, "--audience", AUDIENCE]
    assert main(["check-config", "--config", str(config), *flags]) == 0
    config.write_text(config.read_text().replace("enabled = false", ""))
    assert main(["check-config", "--config", str(config)]) == 2


# ---------------------------------------------------------------- [server] TLS


@pytest.fixture(scope="module")
def tls_pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("tls-pki"))


def _tls(pki: Pki, host: str = "127.0.0.1", **server: Any) -> dict[str, Any]:
    """Settings with one site and ``server`` (values "{ca}", "{client_key}"... name pki files)."""
    paths = {k: str(v) for k, v in vars(pki).items()}
    table = {k: v.format(**paths) if isinstance(v, str) else v for k, v in server.items()}
    return {"sites": [_site()], "server": {"host": host, **table}}


SERVER_FILES = {"tls_cert": "{server_cert}", "tls_key": "{server_key}"}
MTLS = {**SERVER_FILES, "tls_client_ca": "{ca}"}


def test_tls_is_off_by_default_and_loads_its_files(
    tls_pki: Pki, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert settings_from_mapping({"sites": [_site()]}, {}).tls is None
    tls = settings_from_mapping(_tls(tls_pki, **SERVER_FILES), {}).tls
    assert tls is not None
    assert (tls.cert_file, tls.key_file) == (str(tls_pki.server_cert), str(tls_pki.server_key))
    assert (tls.client_ca, tls.client_cert, tls.min_version) == (None, "none", "1.2")
    tls = settings_from_mapping(
        _tls(
            tls_pki,
            **MTLS,
            tls_min_version="1.3",
            tls_client_identities={
                CLIENT_SUBJECT: " ncpeh-test ",
                "2.5.4.3=other,O=Hospital": "other",  # normalized: CN=other,O=Hospital
                "CN=Mail,emailAddress=a@b.cz,C=CZ": "mail",  # openssl's attribute names
            },
        ),
        {},
    ).tls
    assert tls is not None
    assert (tls.client_ca, tls.client_cert, tls.min_version) == (str(tls_pki.ca), "required", "1.3")
    assert dict(tls.client_identities) == {
        CLIENT_SUBJECT: "ncpeh-test",
        "CN=other,O=Hospital": "other",
        "CN=Mail,1.2.840.113549.1.9.1=a@b.cz,C=CZ": "mail",
    }
    optional = settings_from_mapping(_tls(tls_pki, **MTLS, tls_client_cert="optional"), {}).tls
    assert optional is not None and optional.client_cert == "optional"
    relative = {"tls_cert": "server.pem", "tls_key": "server.key"}
    monkeypatch.chdir(tls_pki.ca.parent)  # relative paths are resolved at load
    tls = settings_from_mapping(_tls(tls_pki, **relative), {}).tls
    assert tls is not None and tls.cert_file == str(tls_pki.server_cert)


@pytest.mark.parametrize(
    ("server", "env", "names"),
    [
        ({"tls_key": "{server_key}"}, {}, "server.tls_cert: required with server.tls_key"),
        ({"tls_client_ca": "{ca}"}, {}, "server.tls_cert: required with server.tls_client_ca"),
        ({"tls_cert": "/nonexistent.pem"}, {}, "server.tls_cert: cannot read '/nonexistent.pem'"),
        ({"tls_cert": ""}, {}, "server.tls_cert: must be a non-empty string"),
        ({"tls_cert": "{server_key}"}, {}, "server.tls_cert: '{server_key}' holds no PEM cert"),
        ({"tls_cert": "{server_cert}"}, {}, "server.tls_key: required (server.tls_cert"),
        ({**SERVER_FILES, "tls_key": "/nonexistent.key"}, {}, "server.tls_key: cannot read"),
        ({**SERVER_FILES, "tls_key": "{ca}"}, {}, "server.tls_key: '{ca}' holds no usable PEM"),
        ({**SERVER_FILES, "tls_key": "{client_key}"}, {}, "server.tls_key: '{client_key}' is not"),
        ({**SERVER_FILES, "tls_key": "{encrypted_key}"}, {}, "NCPEH_TLS_KEY_PASSWORD"),
        (
            {**SERVER_FILES, "tls_key": "{encrypted_key}"},
            {"NCPEH_TLS_KEY_PASSWORD": "wrong"},
            "server.tls_key: '{encrypted_key}' holds no usable PEM private key (or NCPEH_TLS",
        ),
        ({**SERVER_FILES, "tls_client_ca": "/nonexistent.pem"}, {}, "server.tls_client_ca: can"),
        ({**SERVER_FILES, "tls_client_ca": "{client_key}"}, {}, "'{client_key}' holds no PEM"),
        ({**MTLS, "tls_client_cert": "sometimes"}, {}, "server.tls_client_cert: must be"),
        ({**SERVER_FILES, "tls_client_cert": "required"}, {}, "server.tls_client_cert: 'requ"),
        ({**SERVER_FILES, "tls_client_cert": "optional"}, {}, "server.tls_client_cert: 'opti"),
        ({**MTLS, "tls_client_cert": "none"}, {}, "server.tls_client_cert: 'none' asks no"),
        ({**SERVER_FILES, "tls_min_version": "1.1"}, {}, "server.tls_min_version: must be"),
        ({**SERVER_FILES, "tls_min_version": 1.0}, {}, "server.tls_min_version"),
        ({**SERVER_FILES, "tls_min_version": ["1.2"]}, {}, "server.tls_min_version"),
        ({**SERVER_FILES, "tls_min_version": True}, {}, "server.tls_min_version"),
        ({**MTLS, "tls_client_identities": "x"}, {}, "server.tls_client_identities: must be"),
        (
            {**SERVER_FILES, "tls_client_identities": {CLIENT_SUBJECT: "x"}},
            {},
            "server.tls_client_identities: needs client certificates",
        ),
        (
            {**MTLS, "tls_client_identities": {"CN = x, O = y": "x"}},
            {},
            "server.tls_client_identities.'CN = x, O = y': not a distinguished name in RFC 4514",
        ),
        ({**MTLS, "tls_client_identities": {"": "x"}}, {}, "not a distinguished name"),
        ({**MTLS, "tls_client_identities": {"cn=x": "x"}}, {}, "not a distinguished name"),
        ({**MTLS, "tls_client_identities": {"CN=x": " "}}, {}, "client id must be a non-empty"),
        ({**MTLS, "tls_client_identities": {"CN=x": 1}}, {}, "client id must be a non-empty"),
        (
            {**MTLS, "tls_client_identities": {"CN=x,O=y": "a", "2.5.4.3=x,O=y": "b"}},
            {},
            "the same subject as another entry (CN=x,O=y)",
        ),
        ({**MTLS, "tls_ciphers": "ALL"}, {}, "server.tls_ciphers: unknown key"),
    ],
)
def test_bad_tls_values_name_the_key(
    tls_pki: Pki, server: dict[str, Any], env: dict[str, str], names: str
) -> None:
    paths = {k: str(v) for k, v in vars(tls_pki).items()}
    with pytest.raises(ConfigError, match=re.escape(names.format(**paths))):
        settings_from_mapping(_tls(tls_pki, **server), env)


def test_required_client_certificates_may_serve_beyond_loopback(
    tls_pki: Pki, jwks_file: Path
) -> None:
    public = settings_from_mapping(_tls(tls_pki, "0.0.0.0", **MTLS), {})
    warning = check_exposure(public)
    assert warning is not None and "NO BEARER TOKENS (no token key source)" in warning
    assert f"server.tls_client_ca ({tls_pki.ca})" in warning and "0.0.0.0:8080" in warning
    off = settings_from_mapping(
        {**_tls(tls_pki, "0.0.0.0", **MTLS), "auth": {"enabled": False}}, {}
    )
    warning = check_exposure(off)
    assert warning is not None and "([auth] enabled = false)" in warning
    # Optional certificates authenticate nobody; HTTPS alone neither.
    for server in ({**MTLS, "tls_client_cert": "optional"}, SERVER_FILES):
        with pytest.raises(ConfigError, match=r"server.host: '0.0.0.0' is not a loopback"):
            check_exposure(settings_from_mapping(_tls(tls_pki, "0.0.0.0", **server), {}))
    # Tokens and client certificates together: both checked, nothing to warn about.
    keys = {"jwks_file": str(jwks_file), "issuer": ISSUER, "audience": AUDIENCE}
    both = settings_from_mapping({**_tls(tls_pki, "0.0.0.0", **MTLS), "auth": keys}, {})
    assert check_exposure(both) is None


def test_cli_check_config_with_tls(
    tls_pki: Pki,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("NCPEH_TLS_KEY_PASSWORD", raising=False)
    config = tmp_path / "gateway.toml"
    config.write_text(
        f'[server]\nhost = "0.0.0.0"\ntls_cert = "{tls_pki.server_cert}"\n'
        f'tls_key = "{tls_pki.server_key}"\ntls_client_ca = "{tls_pki.ca}"\n'
        f'[server.tls_client_identities]\n"{CLIENT_SUBJECT}" = "ncpeh-test"\n'
        '[[sites]]\nid = "a"\nurl = "http://pacs/dicom-web"\n'
    )
    assert main(["check-config", "--config", str(config)]) == 0
    out = capsys.readouterr().out
    assert "auth OFF; HTTPS (TLS 1.2+), client certificates required" in out
    assert "1 subject(s) mapped" in out
    assert "NO BEARER TOKENS" in caplog.text
    config.write_text(
        config.read_text().replace(str(tls_pki.server_key), str(tls_pki.encrypted_key))
    )
    assert main(["check-config", "--config", str(config)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "configuration error: server.tls_key:" in err
    monkeypatch.setenv("NCPEH_TLS_KEY_PASSWORD", KEY_PASSWORD)
    assert main(["check-config", "--config", str(config)]) == 0
