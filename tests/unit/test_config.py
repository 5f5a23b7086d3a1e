from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from ncpeh_dicomweb.cli import main
from ncpeh_dicomweb.config import (
    ConfigError,
    load_settings,
    parse_dimse_address,
    settings_from_mapping,
)

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


@pytest.mark.parametrize(
    ("extra", "names"),
    [
        ({"called_aet": "A" * 17}, "called_aet"),
        ({"called_aet": "BAD\\AET"}, "called_aet"),
        ({"retrieve": "c-teleport"}, "retrieve"),
        ({"url": "http://x"}, "url"),  # a DICOMweb key on a DIMSE site
        ({"cache_max_bytes": 10}, "cache_max_bytes"),
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
