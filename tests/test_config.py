"""Settings: defaults < personae.toml < PERSONAE_* < command line, each with its source."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from runtime.cli import cli
from runtime.config import ConfigError, load_settings


def test_layers_and_sources(tmp_path, monkeypatch):
    (tmp_path / "personae.toml").write_text('temperature = 0.3\nmax_new_tokens = 50\n[discord]\nreply_mode = "all"\n')
    monkeypatch.setenv("PERSONAE_MAX_NEW_TOKENS", "77")
    settings = load_settings({"top_p": 0.5})
    assert settings.temperature == 0.3 and settings.sources["temperature"].endswith("personae.toml")
    assert settings.max_new_tokens == 77 and settings.sources["max_new_tokens"] == "$PERSONAE_MAX_NEW_TOKENS"
    assert settings.top_p == 0.5 and settings.sources["top_p"] == "command line"
    assert settings.plugin_settings("discord") == {"reply_mode": "all"}  # [discord] is short for [plugins.discord]
    assert settings.sources.get("seed", "default") == "default"


def test_third_party_plugins_read_their_own_tables(tmp_path):
    (tmp_path / "personae.toml").write_text('[plugins.weather]\ncity = "Oslo"\n[plugins.http]\nlisten = "127.0.0.1:9"\n')
    settings = load_settings()
    assert settings.plugin_settings("weather") == {"city": "Oslo"}
    assert settings.plugin_settings("http") == {"listen": "127.0.0.1:9"}
    assert settings.plugin_settings("nobody") == {}
    (tmp_path / "personae.toml").write_text('[http]\nlisten = "a"\n[plugins.http]\nlisten = "b"\n')
    with pytest.raises(ConfigError, match=r"both \[http\] and \[plugins.http\]"):
        load_settings()


def test_bad_values_name_the_setting(tmp_path, monkeypatch):
    monkeypatch.setenv("PERSONAE_MAX_NEW_TOKENS", "lots")
    with pytest.raises(ConfigError, match="PERSONAE_MAX_NEW_TOKENS.*max_new_tokens"):
        load_settings()
    monkeypatch.delenv("PERSONAE_MAX_NEW_TOKENS")
    (tmp_path / "personae.toml").write_text("colour = 'blue'\n")
    with pytest.raises(ConfigError, match="unknown setting 'colour'"):
        load_settings()
    (tmp_path / "personae.toml").write_text("temperature = = 1\n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_settings()


def test_personae_config_command_shows_values_and_sources(monkeypatch):
    monkeypatch.setenv("PERSONAE_TEMPERATURE", "0.2")
    result = CliRunner().invoke(cli, ["config", "--json"])
    assert result.exit_code == 0, result.output
    rows = {row["name"]: row for row in json.loads(result.output)}
    assert rows["temperature"]["value"] == 0.2 and rows["temperature"]["source"] == "$PERSONAE_TEMPERATURE"
    assert rows["base_model"]["value"] == "smollm2-135m-instruct"
    bad = CliRunner().invoke(cli, ["config"], env={"PERSONAE_SEED": "x"})
    assert bad.exit_code == 2 and "PERSONAE_SEED" in bad.output
