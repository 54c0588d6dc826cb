"""Hostile HTTP input: oversized bodies, floods of messages, out-of-range numbers; only clean 4xx, never internals."""

from __future__ import annotations

import json
import threading
import time

import httpx
import pytest

LIMITS = {"max_body_bytes": 20_000, "max_messages": 6, "max_message_chars": 2_000}


@pytest.fixture
def engine(make_engine, tiny_base):
    return make_engine(tiny_base, temperature=0, max_new_tokens=4, plugins={"http": LIMITS})


def logged(engine) -> int:
    return engine.store.query("select count(*) as n from messages")[0]["n"]


def chat(server, **body):
    # Greedy: pixel's card would sample, and the guard may cut a sampled reply from the random model short.
    return httpx.post(server.url + "/v1/chat/completions", json={"model": "pixel", "max_tokens": 3,
                                                                  "temperature": 0, **body},
                      timeout=120)


def hi(n=1):
    return [{"role": "user", "content": "Hi"}] * n


def test_a_body_over_the_limit_is_a_413_naming_it_declared_or_chunked(server, engine):
    big = json.dumps({"model": "pixel", "messages": [{"role": "user", "content": "x" * 30_000}]}).encode()
    declared = httpx.post(server.url + "/v1/chat/completions", content=big,
                          headers={"content-type": "application/json"})
    assert declared.status_code == 413 and declared.json()["error"]["code"] == "body_too_large"
    assert "20000 bytes" in declared.json()["error"]["message"] and "max_body_bytes" in declared.json()["error"]["message"]

    def pieces():  # no Content-Length: the server counts what arrives
        for start in range(0, len(big), 4096):
            yield big[start:start + 4096]

    chunked = httpx.post(server.url + "/v1/chat/completions", content=pieces(),
                         headers={"content-type": "application/json"})
    assert chunked.status_code == 413 and "max_body_bytes" in chunked.json()["error"]["message"]
    assert logged(engine) == 0
    # Under the limit, a chunked body is replayed whole to the app.
    small = json.dumps({"model": "pixel", "max_tokens": 2, "temperature": 0, "messages": hi()}).encode()
    ok = httpx.post(server.url + "/v1/chat/completions", content=iter([small[:10], small[10:]]),
                    headers={"content-type": "application/json"})
    assert ok.status_code == 200 and ok.json()["usage"]["completion_tokens"] == 2


def test_too_many_or_too_long_messages_are_400s_naming_the_limit(server, engine):
    many = chat(server, messages=hi(7))
    error = many.json()["error"]
    assert many.status_code == 400 and error["code"] == "too_many_messages" and "limit of 6" in error["message"]
    long = chat(server, messages=[{"role": "user", "content": "y" * 2_001}])
    error = long.json()["error"]
    assert long.status_code == 400 and error["param"] == "messages.0.content" and "2000" in error["message"]
    assert logged(engine) == 0
    assert chat(server, messages=hi(6)).status_code == 200  # at the limit is fine


def test_limits_must_be_positive_whole_numbers(make_engine, tiny_base):
    from plugins.http.app import create_app
    from runtime.config import ConfigError

    engine = make_engine(tiny_base, plugins={"http": {"max_messages": 0}})
    with pytest.raises(ConfigError, match="max_messages must be a positive whole number"):
        create_app(engine, engine.settings, keys=[])


@pytest.mark.parametrize("seed", [2**63, 2**64, -1, -(2**63) - 1, 10**40])
def test_a_seed_out_of_range_is_a_400_naming_the_bound(server, engine, seed):
    for stream in (False, True):
        response = chat(server, messages=hi(), seed=seed, stream=stream)
        error = response.json()["error"]
        assert response.status_code == 400 and error["param"] == "seed"
        assert "9223372036854775808" in error["message"] or "greater than or equal to 0" in error["message"]
    assert logged(engine) == 0


def test_the_largest_seed_is_served(server):
    response = chat(server, messages=hi(), seed=2**63 - 1)
    assert response.status_code == 200 and response.json()["choices"][0]["message"]["role"] == "assistant"


@pytest.mark.parametrize("message_id", [2**63, 2**64, 0, -5, "chatcmpl-99999999999999999999999", "chatcmpl-0"])
def test_feedback_on_an_impossible_message_id_is_a_400(server, message_id):
    response = httpx.post(server.url + "/v1/feedback", json={"message_id": message_id, "value": 1})
    error = response.json()["error"]
    assert response.status_code == 400 and error["param"] == "message_id" and "2**63" in error["message"]


def test_a_bug_is_a_500_without_internals(server, engine, monkeypatch, caplog):
    def broken(turn, n=1):
        raise RuntimeError("secret /internal/path detail")

    monkeypatch.setattr(engine, "replies", broken)
    response = chat(server, messages=hi())
    assert response.status_code == 500 and response.json()["error"]["type"] == "server_error"
    assert "secret" not in response.text and "internal/path" not in response.text and "Traceback" not in response.text
    assert any("secret /internal/path detail" in str(r.exc_info[1]) for r in caplog.records if r.exc_info)


def test_a_generation_failure_mid_stream_names_no_internals(server, engine, monkeypatch):
    from runtime.chat import streaming

    async def broken(self):
        raise RuntimeError("secret CUDA detail")

    monkeypatch.setattr(streaming.StreamedReply, "__anext__", broken)
    with httpx.stream("POST", server.url + "/v1/chat/completions", json={
            "model": "pixel", "stream": True, "max_tokens": 3, "messages": hi()}, timeout=60) as response:
        text = "".join(response.iter_text())
    assert '"server_error"' in text and "secret" not in text and "log has the details" in text
    plain = chat(server, messages=hi())
    assert plain.status_code == 500 and "secret" not in plain.text


@pytest.mark.parametrize("body", [b"\xff\xfe{not utf-8", b'{"model": "pixel", "messages": [', b"[]", b"null",
                                  b'{"model": "pixel", "messages": "Hi"}', b'{"model": 5, "messages": []}',
                                  b'{"model": "pixel", "messages": [{"role": "user", "content": "Hi"}], '
                                  b'"max_tokens": 1e400}', b'[' * 5000 + b']' * 5000])
def test_malformed_bodies_are_clean_400s(server, engine, body):
    response = httpx.post(server.url + "/v1/chat/completions", content=body,
                          headers={"content-type": "application/json"})
    assert response.status_code == 400 and response.json()["error"]["message"]
    assert logged(engine) == 0


def test_the_openapi_document_says_400_and_404_never_422(server):
    document = httpx.get(server.url + "/openapi.json").json()
    assert "422" not in json.dumps(document["paths"])
    chat_responses = document["paths"]["/v1/chat/completions"]["post"]["responses"]
    assert {"200", "400", "401", "404", "413", "429", "500", "503"} <= set(chat_responses)
    assert all("503" in operation["responses"] for path, operations in document["paths"].items()
               for operation in operations.values() if path != "/healthz")
    assert chat_responses["400"]["content"]["application/json"]["schema"] == {"$ref": "#/components/schemas/Error"}
    assert "404" in document["paths"]["/v1/models/{model}"]["get"]["responses"]
    assert "400" in document["paths"]["/v1/feedback"]["post"]["responses"]
    seed = document["components"]["schemas"]["ChatCompletionRequest"]["properties"]["seed"]
    assert "exclusiveMaximum" in json.dumps(seed) and "2**63" in seed["description"]


def test_metrics_have_fine_ttft_buckets_and_request_latency(server):
    # Sampled with a seed: a time to first token needs visible text, which the random model's greedy reply
    # to "Hi" (whitespace) lacks; the seed makes it the same reply every run.
    assert chat(server, messages=hi(), temperature=0.9, seed=1).status_code == 200
    httpx.get(server.url + "/v1/models")
    text = httpx.get(server.url + "/metrics").text
    for bucket in ("7.5", "15.0", "20.0", "45.0"):
        assert f'personae_time_to_first_token_seconds_bucket{{character="pixel",le="{bucket}"}}' in text
    assert 'personae_http_request_seconds_count{route="/v1/chat/completions",status="200"} 1.0' in text
    assert 'personae_http_request_seconds_count{route="/v1/models",status="200"} 1.0' in text
    httpx.get(server.url + "/no/such/path/abc123")
    assert "abc123" not in httpx.get(server.url + "/metrics").text  # raw paths never become labels


def test_health_answers_while_every_worker_thread_is_busy(server, engine, monkeypatch):
    release, entered = threading.Event(), []

    def stuck(turn, n=1):  # a reply stuck in the worker threads (a slow prompt, a slow disk)
        entered.append(1)
        release.wait(60)
        raise RuntimeError("released")

    monkeypatch.setattr(engine, "replies", stuck)
    clients = [threading.Thread(target=chat, args=(server,), kwargs={"messages": hi()}, daemon=True)
               for _ in range(45)]  # more than anyio's 40 worker threads
    for client in clients:
        client.start()
    try:
        deadline = time.monotonic() + 30
        while len(entered) < 40 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert len(entered) == 40  # every worker thread is taken
        health = httpx.get(server.url + "/healthz", timeout=10)
        assert health.status_code == 200 and health.json()["status"] == "ok"
    finally:
        release.set()
        for client in clients:
            client.join(30)


def test_refusals_read_the_body_first_so_the_client_sees_them_never_a_reset(server, engine):
    # Before, a 413 closed the socket with the body unread: the kernel answered with a reset (1 in ~30 here).
    headers = {"content-type": "application/json"}
    with httpx.Client(base_url=server.url, timeout=60) as client:
        for _ in range(40):
            response = client.post("/v1/chat/completions", content=b"x" * 1_000_000, headers=headers)
            assert response.status_code == 413 and response.json()["error"]["code"] == "body_too_large"
            assert "connection" not in response.headers  # the body was read: the connection stays usable
    assert logged(engine) == 0


def test_a_full_generator_queue_is_a_429_before_anything_is_logged(make_engine, tiny_base):
    from http_server import LiveServer

    from runtime.generation.batching import BatchingGenerator
    from runtime.generation.types import GeneratorBusy, Request, SamplingSettings

    generator = BatchingGenerator(tiny_base.model, tiny_base.tokenizer, max_queue=1)
    generator.close()  # a stopped worker never takes requests off its queue: one request fills it
    generator.submit(Request([1], SamplingSettings()))
    assert isinstance(generator.refusal(), GeneratorBusy)
    engine = make_engine(tiny_base, generator=generator)
    live = LiveServer(engine)
    try:
        for stream in (False, True):
            response = chat(live, messages=hi(), user="someone", stream=stream)
            assert response.status_code == 429 and int(response.headers["retry-after"]) >= 1
            assert response.json()["error"]["code"] == "server_busy"
    finally:
        live.close()
    assert logged(engine) == 0  # not even the new conversation's greeting


def test_requests_over_the_concurrency_limit_are_told_to_retry(make_engine, tiny_base):
    import asyncio

    from plugins.http.admission import Admission

    release = asyncio.Event()

    async def slow_app(scope, receive, send):  # a long stream holding its place
        await release.wait()
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"done"})

    async def request(admission, path, body_parts, sent):
        parts = [{"type": "http.request", "body": b"x" * 10, "more_body": i < body_parts - 1}
                 for i in range(body_parts)]
        read = []

        async def receive():
            read.append(parts[len(read)])
            return read[-1]

        async def send(message):
            sent.append(message)

        await admission({"type": "http", "path": path, "headers": []}, receive, send)
        return len(read)

    async def scenario():
        admission = Admission(slow_app, limit=2)
        held = [[], []]
        tasks = [asyncio.create_task(request(admission, "/v1/chat/completions", 1, held[i])) for i in range(2)]
        await asyncio.sleep(0.05)
        refused, probe = [], []
        read = await request(admission, "/v1/chat/completions", 3, refused)
        # Probes are not counted: /healthz reaches the app even now.
        probe_task = asyncio.create_task(request(admission, "/healthz", 1, probe))
        await asyncio.sleep(0.05)
        release.set()
        await asyncio.gather(*tasks, probe_task)
        return admission, held, refused, read, probe

    admission, held, refused, read, probe = asyncio.run(scenario())
    start, body = refused
    assert start["status"] == 503 and dict(start["headers"])[b"retry-after"] == b"2"
    error = json.loads(body["body"])["error"]
    assert error["code"] == "server_busy" and "max_concurrent_requests" in error["message"]
    assert read == 3  # its whole body was read before the answer
    assert [m["status"] for m, _ in held] == [200, 200] and probe[0]["status"] == 200
    assert admission.in_progress == 0
