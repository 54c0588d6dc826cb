"""backend = "vllm": characters answering through a real vLLM CPU server on loopback (SmolLM2, LoRA at run time).

One vLLM server is started for the whole module (the way the backend's `command` starts one) and
reused; the configuration and start-up failures need no vLLM at all.
"""

from __future__ import annotations

import json
import os
import sys
import threading
import time
from types import SimpleNamespace

import pytest
from helpers_adapters import train_tiny_full, train_tiny_lora
from helpers_vllm import (
    TEST_ARGS,
    TEST_ENV,
    VLLM_COMMAND,
    complete,
    load_lora,
    running_requests,
    served_models,
    start_server,
)

from runtime.chat.engine import Turn
from runtime.config import ConfigError
from runtime.errors import Busy, PersonaeError

TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj")


def vllm_engine(make_engine, base, **table):
    return make_engine(base, backend="vllm", plugins={"vllm": table})


def chat(engine, character, channel, max_new_tokens=24, text="Ahoy there! Who are you?", min_new_tokens=0,
         user_name="Ann"):
    return engine.reply(Turn(platform="test", channel=channel, user_id=channel, user_name=user_name, text=text,
                             character=engine.catalog.get(character),
                             sampling={"temperature": 0, "max_new_tokens": max_new_tokens,
                                       "min_new_tokens": min_new_tokens}))


def one_line_error(error) -> str:
    message = str(error.value)
    assert isinstance(error.value, PersonaeError) and "\n" not in message and message
    return message


# --- failures that need no vLLM ----------------------------------------------------------


def test_a_bad_urls_entry_is_a_one_line_config_error(make_engine, tiny_base):
    engine = vllm_engine(make_engine, tiny_base, urls=["localhost:8000"])
    with pytest.raises(ConfigError) as error:
        engine.generator
    assert "'localhost:8000' is not an http(s) URL" in one_line_error(error)
    with pytest.raises(ConfigError) as error:
        vllm_engine(make_engine, tiny_base).generator
    assert "needs exactly one of [plugins.vllm] urls" in one_line_error(error)


def test_a_bad_full_urls_entry_is_a_one_line_config_error(make_engine, tiny_base):
    with pytest.raises(ConfigError) as error:
        vllm_engine(make_engine, tiny_base, urls=["http://127.0.0.1:1"], full_urls={"pixel": "http://x:1"}).generator
    assert "full_urls" in one_line_error(error) and '"pixel@3"' in str(error.value)
    with pytest.raises(ConfigError) as error:
        vllm_engine(make_engine, tiny_base, urls=["http://127.0.0.1:1"], full_urls={"pixel@3": "x:1"}).generator
    assert "[plugins.vllm] full_urls: 'x:1' is not an http(s) URL" in one_line_error(error)


def test_an_unreachable_server_is_a_one_line_error(make_engine, tiny_base):
    from plugins.vllm.server import free_port

    url = f"http://127.0.0.1:{free_port('127.0.0.1')}"
    engine = vllm_engine(make_engine, tiny_base, urls=[url])
    with pytest.raises(PersonaeError) as error:
        engine.generator
    message = one_line_error(error)
    assert url in message and "unreachable" in message and "[plugins.vllm] urls" in message


def test_a_server_that_never_becomes_healthy_is_stopped_with_a_one_line_error(make_engine, tiny_base,
                                                                                isolated_environment):
    pid_file = isolated_environment / "pid"
    sleeper = f"import os, time; open({str(pid_file)!r}, 'w').write(str(os.getpid())); time.sleep(600)"
    engine = vllm_engine(make_engine, tiny_base, command=[sys.executable, "-c", sleeper], start_timeout=3)
    with pytest.raises(PersonaeError) as error:
        engine.generator
    message = one_line_error(error)
    assert "did not become healthy" in message and "start_timeout" in message and "vllm-" in message
    pid = int(pid_file.read_text())
    with pytest.raises(ProcessLookupError):  # stopped, not left running
        os.kill(pid, 0)


def test_a_server_that_exits_at_start_quotes_its_log(make_engine, tiny_base, isolated_environment):
    crash = "import sys; print('RuntimeError: no usable CPU backend', flush=True); sys.exit(3)"
    engine = vllm_engine(make_engine, tiny_base, command=[sys.executable, "-c", crash])
    with pytest.raises(PersonaeError) as error:
        engine.generator
    message = one_line_error(error)
    assert "exited with status 3" in message and "no usable CPU backend" in message
    assert list((isolated_environment / "data" / "logs").glob("vllm-*.log"))  # the log is kept


FAKE_SERVER = """
import http.server, os, subprocess, sys, time
port = int(sys.argv[sys.argv.index("--port") + 1])
engine = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])  # like vLLM's engine process
open(os.environ["PIDS_FILE"], "w").write(f"{os.getpid()} {engine.pid}")

class Health(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        self.send_response(200); self.end_headers()
    def log_message(self, *args):
        pass

http.server.HTTPServer(("127.0.0.1", port), Health).serve_forever()
"""

STARTER = """
import sys, time
from plugins.vllm.server import ManagedServer
ManagedServer([sys.executable, sys.argv[1]], "model", log_dir=sys.argv[2]).start(60)
print("ready", flush=True)
time.sleep(600)
"""


def test_a_started_server_dies_with_a_personae_process_killed_by_sigkill(tmp_path):
    """SIGKILL gives Personae no chance to stop its server: the tether does, taking vLLM's engine processes too."""
    import subprocess

    fake = tmp_path / "fake_vllm.py"
    fake.write_text(FAKE_SERVER)
    pids_file = tmp_path / "pids"
    personae = subprocess.Popen([sys.executable, "-c", STARTER, str(fake), str(tmp_path)], stdout=subprocess.PIPE,
                                text=True, env={**os.environ, "PIDS_FILE": str(pids_file)},
                                cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    assert personae.stdout.readline().strip() == "ready"
    server, engine = map(int, pids_file.read_text().split())
    for pid in (server, engine):
        os.kill(pid, 0)  # both run
    personae.kill()
    personae.wait()
    deadline = time.monotonic() + 60  # the tether polls every second; generous for a loaded machine
    while time.monotonic() < deadline and any(alive(pid) for pid in (server, engine)):
        time.sleep(0.2)
    assert not alive(server) and not alive(engine)
    log = next(tmp_path.glob("vllm-*.log")).read_text()
    assert "is gone: stopping vLLM" in log


def alive(pid: int) -> bool:
    """Whether a process exists and is not a zombie (a killed grandchild may linger as one under init)."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().split(") ", 1)[1][0] != "Z"
    except FileNotFoundError:
        return False


# --- a real vLLM server ----------------------------------------------------------------


@pytest.fixture(scope="module")
def vllm_launched(smollm2_folder, tmp_path_factory):
    """One vLLM CPU server on the real SmolLM2 for the module, launched ($VLLM_TEST_URL: one already running)."""
    if os.environ.get("VLLM_TEST_URL"):
        url = os.environ["VLLM_TEST_URL"]
        yield SimpleNamespace(url=url, wait_healthy=lambda timeout: SimpleNamespace(url=url))
        return
    server = start_server(smollm2_folder, tmp_path_factory.mktemp("vllm-logs"), wait=False)
    yield server
    server.stop()


@pytest.fixture(scope="module")
def vllm_server(vllm_launched):
    """The module's server, once it answers."""
    return vllm_launched.wait_healthy(900)


@pytest.fixture(scope="module")
def loras(real_base, vllm_launched, tmp_path_factory):
    """Two real PEFT LoRAs on SmolLM2 (q/k/v/o, rank 8), and one hybrid with modules_to_save (trained while the
    module's vLLM server loads: both take tens of seconds, and vLLM's start is mostly one core)."""
    root = tmp_path_factory.mktemp("vllm-loras")
    made = {f"v{i}": train_tiny_lora(real_base, root / f"v{i}", steps=2, rank=8, seed=i, target_modules=TARGETS,
                                     lr=3e-2) for i in (1, 2)}
    made["hybrid"] = train_tiny_lora(real_base, root / "hybrid", steps=1, rank=8, seed=5, modules_to_save=["lm_head"])
    return made


@pytest.mark.real_model
def test_two_lora_characters_answer_through_vllm_like_vllm_itself(make_engine, real_base, loras, vllm_server):
    engine = vllm_engine(make_engine, real_base, urls=[vllm_server.url])
    engine.weights.registry.add(loras["v1"], "pixel", activate=True)
    engine.weights.registry.add(loras["v2"], "professor-quill", activate=True)
    replies = {}

    def run(character):
        reply = chat(engine, character, f"chan-{character}")
        reply.result()
        replies[character] = reply

    threads = [threading.Thread(target=run, args=(c,)) for c in ("pixel", "professor-quill")]
    [t.start() for t in threads]
    [t.join(timeout=300) for t in threads]

    assert {"pixel@1", "professor-quill@1"} <= served_models(vllm_server.url)  # loaded at run time
    load_lora(vllm_server.url, "direct-pixel", loras["v1"])
    load_lora(vllm_server.url, "direct-quill", loras["v2"])
    for character, direct_name in (("pixel", "direct-pixel"), ("professor-quill", "direct-quill")):
        reply = replies[character]
        request = reply.stream.request
        expected = complete(vllm_server.url, direct_name, request.input_ids, request.sampling)
        assert reply.stream.text == expected and expected.strip()
        assert reply.message["text"] == expected.strip()
        assert reply.message["weights_version"] == f"lora:{character}@1"
        assert json.loads(reply.message["meta"]) == {"finish_reason": reply.stream.finish_reason, "backend": "vllm",
                                                     "endpoint": vllm_server.url}
        assert reply.message["completion_tokens"] > 0 and reply.message["prompt_tokens"] == len(request.input_ids)
    # The adapter matters: the bare base answers the same prompt differently.
    base_text = complete(vllm_server.url, served_base(vllm_server.url), replies["pixel"].stream.request.input_ids,
                         replies["pixel"].stream.request.sampling)
    assert base_text != replies["pixel"].stream.text


def served_base(url):
    import httpx

    return next(m["id"] for m in httpx.get(f"{url}/v1/models").json()["data"] if not m.get("parent"))


@pytest.mark.real_model
def test_promote_while_chats_run_then_rollback(make_engine, real_base, vllm_server, loras):
    engine = vllm_engine(make_engine, real_base, urls=[vllm_server.url])
    registry = engine.weights.registry
    registry.add(loras["v1"], "pixel", activate=True)
    registry.add(loras["v2"], "pixel")
    in_flight = [chat(engine, "pixel", f"old{i}", max_new_tokens=32) for i in range(2)]
    pieces = [iter(reply) for reply in in_flight]
    firsts = [next(p, "") for p in pieces]
    assert all(reply.stream.finish_reason is None for reply in in_flight)  # both generating on version 1
    registry.promote("pixel", 2)
    assert "pixel@2" in served_models(vllm_server.url)  # preloaded by the promotion
    new = chat(engine, "pixel", "new0")
    new.result()
    finished = [first + "".join(rest) for first, rest in zip(firsts, pieces)]
    for reply, text in zip(in_flight, finished):  # started on version 1, finished on it, none failed
        assert reply.message is not None and reply.message["weights_version"] == "lora:pixel@1" and text
    assert new.message["weights_version"] == "lora:pixel@2"
    assert "pixel@1" not in served_models(vllm_server.url)  # unloaded once its requests ended

    registry.rollback("pixel")
    back = chat(engine, "pixel", "back")
    back.result()
    assert back.message["weights_version"] == "lora:pixel@1"
    models = served_models(vllm_server.url)
    assert "pixel@1" in models and "pixel@2" not in models
    load_lora(vllm_server.url, "direct-v1", loras["v1"])
    request = back.stream.request
    assert back.stream.text == complete(vllm_server.url, "direct-v1", request.input_ids, request.sampling)


@pytest.mark.real_model
def test_a_hybrid_version_falls_back_to_the_local_generator_and_says_so(make_engine, real_base, vllm_server, loras,
                                                                        caplog):
    engine = vllm_engine(make_engine, real_base, urls=[vllm_server.url])
    engine.weights.registry.add(loras["hybrid"], "pixel", activate=True)
    with caplog.at_level("WARNING", logger="personae.vllm"):
        reply = chat(engine, "pixel", "hybrid", max_new_tokens=12)
        reply.result()
    meta = json.loads(reply.message["meta"])
    assert meta["backend"] == "local" and "modules_to_save" in meta["fallback"]
    assert reply.message["weights_version"] == "hybrid:pixel@1" and reply.stream.text
    assert "served by the local generator, not vLLM" in caplog.text
    assert "pixel@1" not in served_models(vllm_server.url)
    assert engine.generator.where("hybrid:pixel@1").startswith("local")


@pytest.mark.real_model
def test_cancel_frees_the_vllm_request_and_a_full_queue_is_busy(make_engine, real_base, vllm_server):
    engine = vllm_engine(make_engine, real_base, urls=[vllm_server.url])
    engine.settings.max_queue = 1
    long = chat(engine, "pixel", "long", max_new_tokens=400)
    pieces = iter(long)
    assert next(pieces)
    with pytest.raises(Busy) as busy:
        chat(engine, "pixel", "second")
    assert busy.value.retry_after >= 1 and "retry" in str(busy.value)
    long.cancel()
    assert "".join(pieces) is not None and long.stream.finish_reason == "cancelled"
    assert long.message is None  # nothing logged for a reply nobody waited for
    deadline = time.monotonic() + 30
    while running_requests(vllm_server.url) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert running_requests(vllm_server.url) == 0  # vLLM aborted it, not just us
    after = chat(engine, "pixel", "after", max_new_tokens=8)  # the slot is free again
    assert after.result() is not None and after.message is not None


@pytest.mark.real_model
def test_a_dead_endpoint_is_taken_out_and_the_live_one_serves(make_engine, real_base, vllm_server, loras):
    from plugins.vllm.server import free_port

    dead = f"http://127.0.0.1:{free_port('127.0.0.1')}"
    engine = vllm_engine(make_engine, real_base, urls=[dead, vllm_server.url], retry_dead=600)
    engine.weights.registry.add(loras["v1"], "pixel", activate=True)
    replies = [chat(engine, "pixel", f"c{i}", max_new_tokens=8) for i in range(3)]
    for reply in replies:
        reply.result()
        assert json.loads(reply.message["meta"])["endpoint"] == vllm_server.url
    pool = engine.generator.pool
    assert [e.alive for e in pool.endpoints] == [False, True] and "connection refused" in pool.endpoints[0].error


@pytest.mark.real_model
def test_two_endpoints_one_killed_mid_stream(make_engine, real_base, vllm_server, loras, tmp_path):
    second = start_server(real_base.folder, tmp_path / "second-logs")
    try:
        engine = vllm_engine(make_engine, real_base, urls=[vllm_server.url, second.url], retry_dead=600)
        engine.weights.registry.add(loras["v1"], "pixel", activate=True)
        # 200 tokens each: min_tokens holds back end-of-sequence, and the only stop string (the user's name,
        # which vLLM's min_tokens does not hold back) is one the model never writes ("\nAnn:" once ended a reply
        # early). The kill comes as soon as every reply there has streamed text and none has finished, so they are
        # mid-stream for sure. (Waiting for vLLM's /metrics to count them running needed 800-token replies: on a
        # quiet machine 400 were done before it did. Those 800 tokens on the surviving server were the slowest
        # part of this file.)
        replies = [chat(engine, "pixel", f"spread{i}", max_new_tokens=200, min_new_tokens=200, user_name="Qzx7")
                   for i in range(4)]
        by_endpoint = {r.stream.served_by["endpoint"] for r in replies}
        assert by_endpoint == {vllm_server.url, second.url}  # least outstanding spreads them
        assert "pixel@1" in served_models(second.url)  # every endpoint got the adapter it needed
        on_second = [r for r in replies if r.stream.served_by["endpoint"] == second.url]
        # Kill the second server the moment every reply there has streamed text and none has finished: mid-stream.
        deadline = time.monotonic() + 120
        while not all(r.stream.text for r in on_second) and time.monotonic() < deadline:
            time.sleep(0.02)
        assert all(r.stream.text and r.stream.finish_reason is None for r in on_second), \
            [(r.stream.text, r.stream.finish_reason) for r in on_second]
        os.killpg(second.process.pid, 9)  # the second server dies mid-stream
        for reply in replies:
            if reply.stream.served_by["endpoint"] == second.url:
                with pytest.raises(PersonaeError) as error:
                    "".join(reply)
                message = one_line_error(error)
                assert second.url in message and "went away mid-reply" in message and reply.message is None
                # The user's message stays in the log; nothing was half-logged for the reply.
                assert engine.store.message(reply.user_message["id"]) is not None
            else:
                assert "".join(reply) and reply.message is not None
        assert [e.alive for e in engine.generator.pool.endpoints] == [True, False]
        after = chat(engine, "pixel", "after", max_new_tokens=8)  # the rest serve on
        after.result()
        assert json.loads(after.message["meta"])["endpoint"] == vllm_server.url
    finally:
        second.stop()


@pytest.fixture(scope="module")
def full_model(real_base, tmp_path_factory):
    """A real full fine-tune of SmolLM2 (every tensor, one AdamW step): stored as an int8 delta by the registry."""
    return train_tiny_full(real_base, tmp_path_factory.mktemp("vllm-full") / "full", steps=1, lr=1e-3, seed=3)


@pytest.mark.real_model
def test_a_full_version_is_served_by_its_own_vllm_server_on_the_materialised_folder(make_engine, real_base,
                                                                                     vllm_server, full_model):
    import httpx

    from adapters.materialise import materialised_folder

    engine = vllm_engine(make_engine, real_base, urls=[vllm_server.url], full_command=VLLM_COMMAND,
                         args=TEST_ARGS, env=TEST_ENV)
    registry = engine.weights.registry
    version = registry.add(full_model, "pixel", activate=True)
    assert version.kind == "full" and version.manifest["delta"]["encoding"] == "int8"  # stored as a delta
    reply = chat(engine, "pixel", "full")  # waits while Personae starts the version's own server
    reply.result()
    own = engine.generator.full.get("full:pixel@1")
    url = own.pool.endpoints[0].url
    folder = materialised_folder(registry.root, "pixel", 1)
    models = httpx.get(f"{url}/v1/models", timeout=10).json()["data"]
    assert url != vllm_server.url and [m["root"] for m in models] == [str(folder)]  # vLLM on the plain folder
    assert json.loads(reply.message["meta"]) == {"finish_reason": reply.stream.finish_reason, "backend": "vllm",
                                                 "endpoint": url}
    assert reply.message["weights_version"] == "full:pixel@1"
    assert engine.generator.where("full:pixel@1") == f"vllm (own endpoint {url})"
    request = reply.stream.request
    expected = complete(url, models[0]["id"], request.input_ids, request.sampling)  # vLLM direct on the folder
    assert reply.stream.text == expected and expected.strip()
    # The fine-tune answers, not the base: the base server gives another reply to the same token ids.
    assert complete(vllm_server.url, served_base(vllm_server.url), request.input_ids, request.sampling) != expected

    # The same server named in full_urls (a running one, e.g. on another machine): used as it is.
    named = vllm_engine(make_engine, real_base, urls=[vllm_server.url], full_urls={"pixel@1": url})
    again = chat(named, "pixel", "full-named")
    again.result()
    assert json.loads(again.message["meta"])["endpoint"] == url
    assert again.stream.text == complete(url, models[0]["id"], again.stream.request.input_ids, request.sampling)
    # A full_urls server with other weights (here: the base) is not trusted: the local generator answers, and says why.
    wrong = vllm_engine(make_engine, real_base, urls=[vllm_server.url], full_urls={"pixel@1": vllm_server.url})
    local = chat(wrong, "pixel", "full-wrong", max_new_tokens=8)
    local.result()
    meta = json.loads(local.message["meta"])
    assert meta["backend"] == "local" and "not the materialised folder" in meta["fallback"] and local.stream.text
    assert wrong.generator.where("full:pixel@1").startswith("local (full_urls:")

    # Rolled back: its server stops once its replies are done; removed: the materialised folder goes too.
    process = own.server.process
    registry.rollback("pixel")
    chat(engine, "pixel", "after").result()
    process.wait(timeout=60)  # stopped (the tether and vLLM's processes with it), not left running
    assert engine.generator.full.get("full:pixel@1") is None
    with pytest.raises(httpx.TransportError):
        httpx.get(f"{url}/health", timeout=5)
    registry.remove("pixel", 1)
    assert not folder.exists()


@pytest.mark.real_model
def test_openai_request_fields_reach_vllm_and_come_back(make_engine, real_base, vllm_server):
    """seed, logit_bias, logprobs, response_format, a forced tool call and the penalties, through the HTTP API
    and the official openai client, served by vLLM (not the local fallback)."""
    from http_server import LiveServer

    engine = vllm_engine(make_engine, real_base, urls=[vllm_server.url])
    live = LiveServer(engine)
    hello = real_base.tokenizer.encode(" hello", add_special_tokens=False)
    try:
        client = live.openai()

        def ask(**body):
            body.setdefault("max_tokens", 8)
            return client.chat.completions.create(
                model="pixel", messages=[{"role": "user", "content": "Hello! Who are you?"}], **body)

        same = {ask(temperature=1.0, seed=7).choices[0].message.content for _ in range(2)}
        assert len(same) == 1
        forced = ask(temperature=1.0, max_tokens=3, logit_bias={str(hello[0]): 100})
        assert len(hello) == 1 and forced.choices[0].message.content == "hello hello hello"
        scored = ask(temperature=0, logprobs=True, top_logprobs=2, presence_penalty=0.5, frequency_penalty=0.5,
                     extra_body={"top_k": 20})
        entries = scored.choices[0].logprobs.content
        assert len(entries) == scored.usage.completion_tokens or scored.choices[0].finish_reason == "stop"
        assert entries and all(len(e.top_logprobs) == 2 and e.top_logprobs[0].logprob >= e.top_logprobs[1].logprob
                               for e in entries)
        assert "".join(e.token for e in entries).strip() == scored.choices[0].message.content
        schema = {"type": "object", "properties": {"mood": {"enum": ["happy", "sad"]}}, "required": ["mood"],
                  "additionalProperties": False}
        shaped = ask(temperature=0, max_tokens=30, response_format={
            "type": "json_schema", "json_schema": {"name": "mood", "schema": schema}})
        assert json.loads(shaped.choices[0].message.content)["mood"] in ("happy", "sad")
        tool = {"type": "function", "function": {"name": "set_mood", "parameters": schema}}
        # vLLM's grammar lets SmolLM2 pretty-print: {"name", "arguments"} took more than 30 tokens in the first run.
        called = ask(temperature=0, max_tokens=100, tools=[tool], tool_choice="required")
        call = called.choices[0].message.tool_calls[0]
        assert called.choices[0].finish_reason == "tool_calls", call.function.arguments
        assert call.function.name == "set_mood" and json.loads(call.function.arguments)["mood"] in ("happy", "sad")
    finally:
        live.close()
    served = [json.loads(m["meta"]) for m in engine.store.query("select meta from messages where role = 'assistant' "
                                                                "and meta like '%finish_reason%'")]
    assert served and all(meta["backend"] == "vllm" and meta["endpoint"] == vllm_server.url for meta in served)
