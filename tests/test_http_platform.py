"""The HTTP platform: `personae serve --http`, its address checks and the API-key rule."""

from __future__ import annotations

import threading

import httpx
import pytest
from click.testing import CliRunner

from plugins.http import HttpPlatform
from plugins.http.auth import authorised, is_loopback, listen_problems, parse_listen
from runtime.cli import cli
from runtime.config import load_settings


@pytest.mark.parametrize("value, expected", [
    ("127.0.0.1:8000", ("127.0.0.1", 8000)), ("0.0.0.0:80", ("0.0.0.0", 80)), ("[::1]:9000", ("::1", 9000)),
    ("8080", ("127.0.0.1", 8080)), (None, ("127.0.0.1", 8000)),
])
def test_listen_addresses_parse(value, expected):
    assert parse_listen(value) == expected


@pytest.mark.parametrize("value", ["localhost", "127.0.0.1:http", "1.2.3.4:70000"])
def test_bad_listen_addresses_are_named(value):
    problems = HttpPlatform().check(load_settings(), {"http": value})
    assert len(problems) == 1 and repr(value) in problems[0]


def test_loopback_is_recognised():
    assert all(is_loopback(h) for h in ("127.0.0.1", "127.8.9.10", "::1", "localhost"))
    assert not any(is_loopback(h) for h in ("0.0.0.0", "::", "192.168.1.5", "example.org"))


def test_non_loopback_needs_api_keys(monkeypatch):
    platform, settings = HttpPlatform(), load_settings()
    assert platform.wanted(settings, {"http": "0.0.0.0:8000"}) and not platform.wanted(settings, {"http": None})
    problems = platform.check(settings, {"http": "0.0.0.0:8000"})
    assert len(problems) == 1 and "PERSONAE_API_KEYS" in problems[0] and "0.0.0.0" in problems[0]
    assert platform.check(settings, {"http": "127.0.0.1:8000"}) == []
    # run() refuses before binding anything (nothing listens beyond loopback in tests).
    with pytest.raises(RuntimeError, match="refusing to listen on 0.0.0.0"):
        platform.run(engine=None, settings=settings, options={"http": "0.0.0.0:8000"})
    assert platform.server is None
    monkeypatch.setenv("PERSONAE_API_KEYS", "alpha, beta,")
    assert platform.check(settings, {"http": "0.0.0.0:8000"}) == []


def test_serve_refuses_a_public_address_without_keys():
    result = CliRunner().invoke(cli, ["serve", "--http", "0.0.0.0:8000", "--check"])
    assert result.exit_code == 2 and "http: problems" in result.output
    assert "PERSONAE_API_KEYS" in result.output
    started = CliRunner().invoke(cli, ["serve", "--no-scheduler", "--http", "0.0.0.0:8000"])
    assert started.exit_code != 0 and "refusing to listen on 0.0.0.0" in started.output


def test_bearer_keys_are_checked():
    assert authorised(None, []) and authorised("Bearer k1", ["k1", "k2"]) and authorised("bearer k2", ["k1", "k2"])
    assert not authorised(None, ["k1"]) and not authorised("Bearer k", ["k1"]) and not authorised("k1", ["k1"])
    assert listen_problems("10.0.0.1", ["k1"]) == []


def test_the_platform_serves_until_stopped(make_engine, tiny_base):
    engine = make_engine(tiny_base)
    platform = HttpPlatform()
    settings = load_settings({"http": {"log_level": "warning"}})
    thread = threading.Thread(target=platform.run, args=(engine, settings, {"http": "127.0.0.1:0"}), daemon=True)
    thread.start()
    assert platform.started.wait(60) and platform.port
    health = httpx.get(f"http://127.0.0.1:{platform.port}/healthz").json()
    assert health == {"status": "ok", "characters": 3, "model_loaded": True, "queue_depth": 0, "auth": False}
    page = httpx.get(f"http://127.0.0.1:{platform.port}/")
    assert page.status_code == 200 and 'src="/static/app.js"' in page.text
    assert httpx.get(f"http://127.0.0.1:{platform.port}/static/app.css").status_code == 200
    platform.stop()
    thread.join(10)
    assert not thread.is_alive()
