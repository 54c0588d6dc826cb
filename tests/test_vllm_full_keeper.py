"""Full versions' own vLLM endpoints over time: an own server that dies is started again (local answers
meanwhile, with the reason), one that keeps failing is given up, a full_urls server down at load is used once
it comes up, and a cap on own servers. Real processes throughout: tests/fake_vllm.py stands in for vLLM (a real
one takes ~40 s to start here; tests/test_vllm_backend.py runs a real vLLM on a full version end to end).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from helpers_adapters import train_tiny_full, train_tiny_lora

from plugins.vllm.server import ManagedServer, free_port
from runtime.chat.engine import Turn

FAKE = str(Path(__file__).with_name("fake_vllm.py"))
FAKE_COMMAND = [sys.executable, FAKE]


@pytest.fixture
def base_server(tmp_path, tiny_base):
    """A fake vLLM on the tiny base for the base and LoRA versions (started like the backend's `command`)."""
    server = ManagedServer(FAKE_COMMAND, tiny_base.folder, log_dir=tmp_path / "base-log").start(60)
    yield server
    server.stop()


@pytest.fixture
def full_model(tiny_base, tmp_path):
    return train_tiny_full(tiny_base, tmp_path / "full", steps=1, lr=1e-2)


def engine_on(make_engine, base, base_server, **table):
    return make_engine(base, backend="vllm", plugins={"vllm": {"urls": [base_server.url], **table}})


def chat(engine, character="pixel", channel="c"):
    reply = engine.reply(Turn(platform="test", channel=channel, user_id=channel, user_name="Ann", text="Ahoy!",
                              character=engine.catalog.get(character),
                              sampling={"temperature": 0, "max_new_tokens": 6}))
    reply.result()
    return reply, json.loads(reply.message["meta"])


def wait_for(condition, what: str, timeout: float = 60):
    deadline = time.monotonic() + timeout  # generous: the machine is shared
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def test_an_own_server_that_dies_is_started_again_and_local_answers_meanwhile(make_engine, tiny_base, base_server,
                                                                               full_model, tmp_path):
    pids, gate = tmp_path / "pids", tmp_path / "gate"
    engine = engine_on(make_engine, tiny_base, base_server, full_command=FAKE_COMMAND, restart_backoff=0.2,
                       env={"FAKE_PIDS": str(pids), "FAKE_GATE": str(gate)})
    engine.weights.registry.add(full_model, "pixel", activate=True)
    reply, meta = chat(engine)
    own = engine.generator.full.get("full:pixel@1")
    url = own.server.url
    assert meta == {"finish_reason": "stop", "backend": "vllm", "endpoint": url} and url != base_server.url
    assert reply.stream.text.startswith(f"fake vLLM on port {own.server.port}")

    first = int(pids.read_text().split()[0])
    os.kill(first, signal.SIGKILL)  # vLLM dies (OOM killer, a crash); its restart is held back by the gate
    wait_for(lambda: not own.server.running(), "the tether to notice")
    reply, meta = chat(engine, channel="meanwhile")
    assert meta["backend"] == "local" and reply.stream.text  # answered, by the local generator
    assert f"its vLLM server {url} exited with status 137" in meta["fallback"] and str(own.server.log_path) in \
        meta["fallback"]
    where = engine.generator.where("full:pixel@1")
    assert where.startswith("local (full_command: its vLLM server") and "starting it again in" in where

    wait_for(lambda: len(pids.read_text().split()) == 2, "the restart")
    gate.touch()
    wait_for(lambda: engine.generator.where("full:pixel@1").startswith("vllm (own endpoint"), "vLLM again")
    reply, meta = chat(engine, channel="again")
    assert meta["backend"] == "vllm" and meta["endpoint"] == own.server.url == url  # its port was free again
    assert reply.stream.text.startswith(f"fake vLLM on port {own.server.port}")
    log = own.server.log_path.read_text()  # one log, both starts in it
    assert log.count("--- ") == 2 and log.count("fake vLLM start") == 2 and "fake vLLM start 2" in log


def test_a_full_command_server_that_fails_to_start_is_retried_then_given_up(make_engine, tiny_base, base_server,
                                                                            full_model, tmp_path):
    crash = [sys.executable, "-c", "import sys; print('RuntimeError: no usable CPU backend', flush=True); "
                                   "sys.exit(3)"]
    engine = engine_on(make_engine, tiny_base, base_server, full_command=crash, restart_attempts=1,
                       restart_backoff=0.2, log_dir=str(tmp_path / "logs"))
    engine.weights.registry.add(full_model, "pixel", activate=True)
    reply, meta = chat(engine)
    assert meta["backend"] == "local" and reply.stream.text
    reason = meta["fallback"]
    assert reason.startswith("full_command: vLLM exited with status 3 before it became healthy")
    assert "no usable CPU backend" in reason and "full log:" in reason
    final = wait_for(lambda: "gave up" in engine.generator.where("full:pixel@1") and
                     engine.generator.where("full:pixel@1"), "giving up")
    assert "gave up after 2 failure(s) in a row (restart_attempts = 1)" in final
    assert chat(engine, channel="later")[1]["backend"] == "local"
    log = next((tmp_path / "logs").glob("vllm-*.log")).read_text()
    assert log.splitlines().count("RuntimeError: no usable CPU backend") == 2  # started, restarted once, no more


def test_a_full_urls_server_down_at_load_is_used_once_it_comes_up(make_engine, tiny_base, base_server, full_model,
                                                                  tmp_path):
    port = free_port("127.0.0.1")
    url = f"http://127.0.0.1:{port}"
    engine = engine_on(make_engine, tiny_base, base_server, full_urls={"pixel@1": url}, retry_dead=0.3)
    registry = engine.weights.registry
    version = registry.add(full_model, "pixel", activate=True)
    reply, meta = chat(engine)
    assert meta["backend"] == "local" and reply.stream.text
    assert meta["fallback"].startswith(f"full_urls: its vLLM server {url} is unreachable")
    assert "checked again every 0.3 s" in meta["fallback"]

    # The operator starts it on the materialised folder: Personae notices without a restart.
    folder = registry.materialise(version)
    args = [*FAKE_COMMAND, "--model", str(folder), "--host", "127.0.0.1", "--port", str(port)]
    server = subprocess.Popen(args, stdout=subprocess.DEVNULL)
    try:
        wait_for(lambda: engine.generator.where("full:pixel@1") == f"vllm (own endpoint {url})", "the recheck")
        reply, meta = chat(engine, channel="up")
        assert meta == {"finish_reason": "stop", "backend": "vllm", "endpoint": url}
        assert reply.stream.text.startswith(f"fake vLLM on port {port}")
        server.kill()  # it goes away again: local, then back once it returns
        server.wait()
        reply, meta = chat(engine, channel="down")
        assert meta["backend"] == "local" and url in meta["fallback"] and reply.stream.text
        server = subprocess.Popen(args, stdout=subprocess.DEVNULL)
        wait_for(lambda: engine.generator.where("full:pixel@1").startswith("vllm"), "the second recheck")
        assert chat(engine, channel="back")[1]["endpoint"] == url
    finally:
        server.kill()
        server.wait()


def test_own_servers_are_capped_and_a_version_over_the_cap_gets_one_when_a_slot_frees(make_engine, tiny_base,
                                                                                       base_server, full_model,
                                                                                       tmp_path):
    engine = engine_on(make_engine, tiny_base, base_server, full_command=FAKE_COMMAND, max_full_servers=1)
    registry = engine.weights.registry
    registry.add(train_tiny_lora(tiny_base, tmp_path / "lora", steps=1), "pixel", activate=True)
    registry.add(full_model, "pixel")
    registry.promote("pixel", 2)  # pixel@2 (full) takes the one slot
    assert chat(engine)[1]["backend"] == "vllm"
    registry.add(train_tiny_full(tiny_base, tmp_path / "quill", steps=1, lr=1e-2, seed=1), "professor-quill",
                 activate=True)
    reply, meta = chat(engine, "professor-quill", "quill")
    assert meta["backend"] == "local" and reply.stream.text
    assert meta["fallback"].startswith("max_full_servers = 1 own vLLM servers run already (full:pixel@2)")
    assert "raise max_full_servers" in meta["fallback"]

    registry.rollback("pixel")  # back to the LoRA: pixel@2's server stops and its slot goes to Quill
    server = engine.generator.full.versions.get("full:pixel@2")
    assert server is None or server.removed
    wait_for(lambda: engine.generator.where("full:professor-quill@1").startswith("vllm (own endpoint"), "the slot")
    assert chat(engine, "professor-quill", "quill2")[1]["backend"] == "vllm"
    assert len([e for e in engine.generator.full.versions.values() if e.slot]) == 1


def test_cap_and_restart_settings_are_checked():
    from plugins.vllm.config import parse_config
    from runtime.config import ConfigError

    config = parse_config({"urls": ["http://127.0.0.1:8000"], "max_full_servers": 0, "restart_attempts": 0})
    assert (config.max_full_servers, config.restart_attempts, config.restart_backoff) == (0, 0, 5.0)
    assert parse_config({"urls": ["http://127.0.0.1:8000"]}).max_full_servers == 2  # the default
    for name, value, problem in (("max_full_servers", -1, "must be 0 or more"), ("restart_backoff", 0, "positive"),
                                 ("restart_attempts", "three", "is not a number")):
        with pytest.raises(ConfigError) as error:
            parse_config({"urls": ["http://127.0.0.1:8000"], name: value})
        assert f"[plugins.vllm] {name} = " in str(error.value) and problem in str(error.value)
