from __future__ import annotations

from pathlib import Path

import pytest

from gateway.settings import SettingsError, load_settings


def test_defaults_and_env_parsing() -> None:
    s = load_settings({"TENANTGATE_ENGINE_URLS": "http://a:1, http://b:2/", "TENANTGATE_PORT": "9000",
                       "TENANTGATE_ENGINE_TOTAL_TIMEOUT": "1.5"})
    assert s.engine_urls == ("http://a:1", "http://b:2/")
    assert s.port == 9000 and s.engine_total_timeout == 1.5
    assert s.database_url is None and s.server == "uvicorn" and s.workers == 1


def test_toml_file_overlaid_by_environment(tmp_path: Path) -> None:
    config = tmp_path / "tg.toml"
    config.write_text('port = 7000\nengine_urls = ["http://x:1"]\nworkers = 3\n')
    s = load_settings({"TENANTGATE_CONFIG": str(config), "TENANTGATE_WORKERS": "2"})
    assert (s.port, s.engine_urls, s.workers) == (7000, ("http://x:1",), 2)


@pytest.mark.parametrize(
    ("env", "named"),
    [
        ({"TENANTGATE_PORT": "eighty"}, "TENANTGATE_PORT"),
        ({"TENANTGATE_PORT": "70000"}, "TENANTGATE_PORT"),
        ({"TENANTGATE_WORKERS": "0"}, "TENANTGATE_WORKERS"),
        ({"TENANTGATE_ENGINE_URLS": "localhost:8000"}, "TENANTGATE_ENGINE_URLS"),
        ({"TENANTGATE_EMBEDDING_URLS": "http://h:1/v1"}, "TENANTGATE_EMBEDDING_URLS"),
        ({"TENANTGATE_DATABASE_URL": "mysql://x"}, "TENANTGATE_DATABASE_URL"),
        ({"TENANTGATE_SERVER": "gunicorn"}, "TENANTGATE_SERVER"),
        ({"TENANTGATE_LOG_LEVEL": "loud"}, "TENANTGATE_LOG_LEVEL"),
        ({"TENANTGATE_PROT": "1"}, "TENANTGATE_PROT"),
        ({"TENANTGATE_EMBEDDED_SHARED_BUFFERS": "lots"}, "TENANTGATE_EMBEDDED_SHARED_BUFFERS"),
        ({"TENANTGATE_EMBEDDED_SHARED_BUFFERS": "1GB'; fsync = 'off"}, "TENANTGATE_EMBEDDED_SHARED_BUFFERS"),
        ({"TENANTGATE_CONFIG": "/nonexistent.toml"}, "TENANTGATE_CONFIG"),
    ],
)
def test_a_wrong_setting_names_itself(env: dict[str, str], named: str) -> None:
    with pytest.raises(SettingsError) as exc:
        load_settings(env)
    assert named in str(exc.value)


def test_secrets_are_never_echoed() -> None:
    with pytest.raises(SettingsError) as exc:
        load_settings({"TENANTGATE_ADMIN_KEY": "short-secret-value"})
    assert "short-secret-value" not in str(exc.value) and "TENANTGATE_ADMIN_KEY" in str(exc.value)
    secret = "s" * 40
    s = load_settings({"TENANTGATE_ADMIN_KEY": secret, "TENANTGATE_DATABASE_URL": "postgresql://u:pw@h/db"})
    assert secret not in repr(s) and "pw@" not in repr(s) and secret not in str(s)


def test_bad_toml_is_reported(tmp_path: Path) -> None:
    config = tmp_path / "bad.toml"
    config.write_text("port = [")
    with pytest.raises(SettingsError, match="not valid TOML"):
        load_settings({"TENANTGATE_CONFIG": str(config)})
    config.write_text("colour = 1")
    with pytest.raises(SettingsError, match="colour"):
        load_settings({"TENANTGATE_CONFIG": str(config)})
