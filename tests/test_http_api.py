"""The OpenAI-compatible API on a live loopback server, driven by the official openai client."""

from __future__ import annotations

import time

import httpx
import openai
import pytest
from http_server import LiveServer


@pytest.fixture
def engine(make_engine, tiny_base):
    return make_engine(tiny_base, temperature=0, max_new_tokens=8)


def rows(engine, sql, params=()):
    return engine.store.query(sql, params)


@pytest.fixture
def spy(engine, prompt_spy):
    return prompt_spy(engine)


def test_models_lists_every_character(server, engine):
    models = server.openai().models.list()
    ids = [m.id for m in models.data]
    assert ids == engine.catalog.names() and "pixel" in ids
    pixel = next(m for m in models.data if m.id == "pixel")
    assert pixel.owned_by == "personae" and pixel.model_extra["active_version"] == "base"
    assert server.openai().models.retrieve("pixel").id == "pixel"


def test_non_streaming_completion_is_logged_with_usage(server, engine):
    response = server.openai().chat.completions.create(
        model="pixel", messages=[{"role": "user", "content": "Hello Pixel"}], max_tokens=6, temperature=0, user="ann")
    message_id = response.model_extra["personae_message_id"]
    assert response.id == f"chatcmpl-{message_id}" and response.object == "chat.completion"
    assert response.usage.completion_tokens == 6 and response.usage.prompt_tokens > 50
    assert response.usage.total_tokens == response.usage.prompt_tokens + 6
    assert response.choices[0].finish_reason == "length"
    reply = engine.store.message(message_id)
    asked = engine.store.message(reply["reply_to"])
    assert reply["text"] == response.choices[0].message.content and reply["role"] == "assistant"
    assert (asked["text"], asked["user_id"], asked["platform"]) == ("Hello Pixel", "http:ann", "http")
    assert reply["character"] == "pixel" and reply["completion_tokens"] == 6 and reply["channel"] == "user:ann"


def test_streaming_completion_ends_with_done_and_matches_the_log(server, engine):
    chunks = list(server.openai().chat.completions.create(
        model="professor-quill", messages=[{"role": "user", "content": "What is a comet?"}], max_tokens=8,
        temperature=0, stream=True, stream_options={"include_usage": True}))
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert chunks[0].choices[0].delta.role == "assistant"
    finish = [c for c in chunks if c.choices and c.choices[0].finish_reason]
    assert len(finish) == 1 and finish[0].choices[0].finish_reason == "length"
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == 8
    assert len({c.id for c in chunks}) == 1  # one id for the whole stream, as OpenAI does
    message = engine.store.message(finish[0].model_extra["personae_message_id"])
    assert message["text"] == text and message["character"] == "professor-quill"
    # The raw SSE ends with the [DONE] sentinel.
    with httpx.stream("POST", server.url + "/v1/chat/completions", json={
            "model": "pixel", "stream": True, "max_tokens": 3, "messages": [{"role": "user", "content": "Hi"}]}) as r:
        lines = [line for line in r.iter_lines() if line]
    assert r.headers["content-type"].startswith("text/event-stream") and lines[-1] == "data: [DONE]"


def test_sampling_options_reach_the_generator(server, engine, monkeypatch):
    seen = []
    submit = engine.generator.submit
    monkeypatch.setattr(engine.generator, "submit", lambda request: seen.append(request) or submit(request))
    server.openai().chat.completions.create(
        model="pixel", messages=[{"role": "user", "content": "Hi"}], max_tokens=5, temperature=0.3, top_p=0.5,
        stop=["END", "\n\n"], seed=7)
    sampling = seen[0].sampling
    assert (sampling.max_new_tokens, sampling.temperature, sampling.top_p, sampling.seed) == (5, 0.3, 0.5, 7)
    assert sampling.stop[:2] == ["END", "\n\n"] and sampling.stop[-1] == "\nUser:"


def test_the_clients_messages_are_the_history(server, engine, spy):
    """SillyTavern and Open WebUI resend the whole chat: it becomes the prompt's history."""
    messages = [
        {"role": "system", "content": "You are a generic assistant."},  # the client's own prompt: not used
        {"role": "assistant", "content": "Beep! Pixel here."},
        {"role": "user", "content": "My cat is called Biscuit."},
        {"role": "assistant", "content": "Biscuit is a great name!"},
        {"role": "user", "content": "What is my cat called?", "name": "Ann"},
    ]
    server.openai().chat.completions.create(model="pixel", messages=messages, max_tokens=4)
    prompt = spy.prompts[-1]
    contents = spy.chat()  # card, example dialogues and lore aside
    assert contents == ["Beep! Pixel here.", "My cat is called Biscuit.", "Biscuit is a great name!",
                             "What is my cat called?"]
    assert not any("generic assistant" in m["content"] for m in prompt)
    asked = rows(engine, "select * from messages where role = 'user'")
    assert [m["text"] for m in asked] == ["What is my cat called?"] and asked[0]["user_name"] == "Ann"


def test_a_conversation_header_keeps_the_logged_history(server, engine, spy):
    client = server.openai()
    headers = {"X-Personae-Conversation": "conv-42"}
    for text in ("I live in Lisbon.", "Where do I live?"):
        client.chat.completions.create(model="captain-mara-voss", messages=[{"role": "user", "content": text}],
                                       max_tokens=4, extra_headers=headers)
    contents = spy.chat()
    greeting = engine.greeting(engine.catalog.get("captain-mara-voss"))
    assert contents[:2] == [greeting, "I live in Lisbon."] and contents[-1] == "Where do I live?"
    logged = rows(engine, "select role, channel from messages order by id")
    assert [m["role"] for m in logged] == ["assistant", "user", "assistant", "user", "assistant"]
    assert {m["channel"] for m in logged} == {"conv-42"}
    # Without a conversation or user, a one-message request starts from nothing.
    client.chat.completions.create(model="captain-mara-voss", messages=[{"role": "user", "content": "Hi"}],
                                   max_tokens=4)
    assert spy.chat() == ["Hi"]


def test_regenerate_rerolls_the_last_reply(server, engine):
    client = httpx.Client(base_url=server.url, headers={"X-Personae-Conversation": "swipes"}, timeout=60)
    first = client.post("/v1/chat/completions", json={
        "model": "pixel", "user": "bo", "max_tokens": 4,
        "messages": [{"role": "user", "content": "Tell me a joke"}]}).json()
    again = client.post("/v1/regenerate", json={"model": "pixel", "user": "bo", "max_tokens": 4}).json()
    swipe = engine.store.message(again["personae_message_id"])
    assert swipe["swipe_of"] == first["personae_message_id"]
    assert swipe["reply_to"] == engine.store.message(first["personae_message_id"])["reply_to"]
    fresh = httpx.post(server.url + "/v1/regenerate", json={"model": "pixel", "user": "nobody-yet"}, timeout=60)
    assert fresh.status_code == 400 and "no reply to regenerate" in fresh.json()["error"]["message"]


def test_unknown_model_is_a_404_in_openai_shape(server):
    with pytest.raises(openai.NotFoundError) as caught:
        server.openai().chat.completions.create(model="nobody", messages=[{"role": "user", "content": "Hi"}])
    error = caught.value.body
    assert caught.value.status_code == 404 and error["code"] == "model_not_found" and error["param"] == "model"
    assert "pixel" in error["message"]  # it names the characters there are
    with pytest.raises(openai.NotFoundError, match="no adapter registry|does not exist"):
        server.openai().chat.completions.create(model="pixel@3", messages=[{"role": "user", "content": "Hi"}])


@pytest.mark.parametrize("body, param", [
    ('{"model": "pixel", "messages": [', None),  # not JSON
    ('{"messages": [{"role": "user", "content": "Hi"}]}', "model"),
    ('{"model": "pixel", "temperature": 5, "messages": [{"role": "user", "content": "Hi"}]}', "temperature"),
    ('{"model": "pixel", "messages": [{"role": "wizard", "content": "Hi"}]}', "messages.0.role"),
    ('{"model": "pixel", "messages": [{"role": "assistant", "content": "Hi"}]}', "messages"),
    ('{"model": "pixel", "max_tokens": 999999, "messages": [{"role": "user", "content": "Hi"}]}', "max_tokens"),
])
def test_malformed_bodies_are_400s_naming_the_problem(server, engine, body, param):
    response = httpx.post(server.url + "/v1/chat/completions", content=body,
                          headers={"content-type": "application/json"})
    error = response.json()["error"]
    assert response.status_code == 400 and error["type"] == "invalid_request_error"
    assert error["param"] == param and error["message"]
    assert rows(engine, "select count(*) as n from messages")[0]["n"] == 0  # nothing logged


def test_a_busy_generator_is_a_429_with_retry_after(server, engine, monkeypatch):
    from runtime.generation.types import GeneratorBusy

    def busy(request):
        raise GeneratorBusy(7)

    monkeypatch.setattr(engine.generator, "submit", busy)
    with pytest.raises(openai.RateLimitError) as caught:
        server.openai().chat.completions.create(model="pixel", messages=[{"role": "user", "content": "Hi"}])
    assert caught.value.response.headers["retry-after"] == "7"
    assert "busy" in caught.value.body["message"]
    metrics = httpx.get(server.url + "/metrics").text
    assert 'personae_http_requests_total{character="pixel",status="busy"} 1.0' in metrics


def test_feedback_on_a_reply_is_stored(server, engine):
    response = server.openai().chat.completions.create(model="pixel", messages=[{"role": "user", "content": "Hi"}],
                                                       user="cy", max_tokens=3)
    message_id = response.model_extra["personae_message_id"]
    ok = httpx.post(server.url + "/v1/feedback", json={"message_id": response.id, "value": -1, "user": "cy"})
    assert ok.status_code == 200 and ok.json()["message_id"] == message_id
    httpx.post(server.url + "/v1/feedback", json={"message_id": message_id, "value": 1, "user": "cy"})
    stored = rows(engine, "select message_id, user_id, value, source from feedback")
    assert stored == [{"message_id": message_id, "user_id": "http:cy", "value": 1, "source": "http"}]
    httpx.post(server.url + "/v1/feedback", json={"message_id": message_id, "value": 0, "user": "cy"})
    assert rows(engine, "select * from feedback") == []
    missing = httpx.post(server.url + "/v1/feedback", json={"message_id": 9999, "value": 1})
    assert missing.status_code == 404 and missing.json()["error"]["code"] == "message_not_found"
    wrong = httpx.post(server.url + "/v1/feedback", json={"message_id": message_id, "value": 5})
    assert wrong.status_code == 400 and wrong.json()["error"]["param"] == "value"


def test_metrics_and_health(server, engine):
    for _ in range(2):
        server.openai().chat.completions.create(model="pixel", messages=[{"role": "user", "content": "Hi"}],
                                                max_tokens=5)
    text = httpx.get(server.url + "/metrics").text
    assert 'personae_http_requests_total{character="pixel",status="ok"} 2.0' in text
    assert 'personae_completion_tokens_total{character="pixel"} 10.0' in text
    assert 'personae_time_to_first_token_seconds_count{character="pixel"} 2.0' in text
    assert "personae_queue_depth 0.0" in text and 'personae_tokens_per_second{character="pixel"}' in text
    health = httpx.get(server.url + "/healthz").json()
    assert health["status"] == "ok" and health["model_loaded"] and health["characters"] == 3


def test_api_keys_are_required_when_configured(engine):
    live = LiveServer(engine, keys=["k-one", "k-two"])
    try:
        with pytest.raises(openai.AuthenticationError) as caught:
            live.openai(key="wrong").models.list()
        assert caught.value.body["code"] == "invalid_api_key"
        assert [m.id for m in live.openai(key="k-two").models.list().data] == engine.catalog.names()
        assert httpx.get(live.url + "/metrics").status_code == 401
        assert httpx.get(live.url + "/healthz").status_code == 200  # probes need no key
        assert "<title>Personae</title>" in httpx.get(live.url + "/").text  # the page asks for the key itself
    finally:
        live.close()


def test_a_client_leaving_mid_stream_cancels_its_reply(make_engine, tiny_base):
    engine = make_engine(tiny_base, temperature=0, max_new_tokens=400)
    live = LiveServer(engine)
    try:
        with httpx.stream("POST", live.url + "/v1/chat/completions", timeout=60, json={
                "model": "pixel", "stream": True, "max_tokens": 400,
                "messages": [{"role": "user", "content": "A long story"}]}) as r:
            for index, _ in enumerate(r.iter_lines()):
                if index > 4:
                    break  # leave after a few pieces
        deadline = time.monotonic() + 30
        while "cancelled" not in httpx.get(live.url + "/metrics").text and time.monotonic() < deadline:
            time.sleep(0.05)
        assert 'status="cancelled"} 1.0' in httpx.get(live.url + "/metrics").text
        # The generator is free again and the abandoned reply was never logged.
        done = live.openai().chat.completions.create(model="pixel", messages=[{"role": "user", "content": "Hi"}],
                                                     max_tokens=3, temperature=0)  # greedy: never cut short
        assert done.usage.completion_tokens == 3
        logged = rows(engine, "select role, text from messages order by id")
        assert [m["role"] for m in logged] == ["user", "user", "assistant"]
    finally:
        live.close()


def test_characters_avatars_and_audits_for_the_page(server, engine):
    from runtime.audit.report import audit_folder

    listed = httpx.get(server.url + "/v1/characters", params={"user_name": "Ann"}).json()["data"]
    pixel = next(c for c in listed if c["id"] == "pixel")
    assert pixel["greeting"] == engine.greeting(engine.catalog.get("pixel"), "Ann") and pixel["name"]
    avatar = httpx.get(server.url + pixel["avatar"])
    assert avatar.headers["content-type"] == "image/png" and avatar.content[:8] == b"\x89PNG\r\n\x1a\n"
    assert httpx.get(server.url + "/v1/characters/nobody/avatar.png").status_code == 404

    for name in ("run-1", "run-2"):  # where `personae audit` writes its report; the newest is shown
        run = audit_folder(engine.settings, "pixel", name)
        run.mkdir(parents=True)
        (run / "alignment.png").write_bytes(avatar.content)
        (run / "report.html").write_text(f"<h1>{name}</h1>")
    audits = httpx.get(server.url + "/v1/characters/pixel/audits").json()
    assert [(f["name"], f["kind"]) for f in audits["files"]] == [("alignment.png", "image"), ("report.html", "page")]
    assert httpx.get(server.url + audits["files"][0]["url"]).content == avatar.content
    assert httpx.get(server.url + audits["files"][1]["url"]).text == "<h1>run-2</h1>"
    assert httpx.get(server.url + "/v1/characters/pixel/audits/..%2Fsecret").status_code == 404
    empty = httpx.get(server.url + "/v1/characters/professor-quill/audits").json()
    assert empty["files"] == [] and "no audits" in empty["message"]


@pytest.mark.parametrize("piece_lists, expected", [
    (["  Hi", " you", "  "], "Hi you"),                       # stripped like the logged text
    ([" \n", "Hi", " ", " there ", "\n"], "Hi  there"),      # whitespace inside kept, at the ends dropped
    (["a\nU", "nicorns\n", "User"], "a\nUnicorns\nUser"),
])
def test_streamed_text_is_what_is_logged(piece_lists, expected):
    from plugins.http.chat import TrimmedText

    trimmed = TrimmedText()
    streamed = "".join(trimmed.feed(p) for p in piece_lists) + trimmed.feed("", last=True)
    assert streamed == expected == "".join(piece_lists).strip()


def test_one_completion_on_the_real_model(make_engine, real_base):
    engine = make_engine(real_base, temperature=0, max_new_tokens=16)
    live = LiveServer(engine)
    try:
        response = live.openai().chat.completions.create(
            model="professor-quill", messages=[{"role": "user", "content": "Who are you?"}], max_tokens=16)
    finally:
        live.close()
    text = response.choices[0].message.content
    assert len(text.split()) >= 3 and sum(ch.isalpha() for ch in text) > len(text) / 2
    assert engine.store.message(response.model_extra["personae_message_id"])["text"] == text


def test_registry_versions_are_models(make_engine, tiny_base, tmp_path):
    """With the adapter registry, /v1/models lists NAME@N and `model` pins the weights that answer."""
    from helpers_adapters import train_tiny_lora

    engine = make_engine(tiny_base, temperature=0, max_new_tokens=4)
    registry = engine.registry
    registry.add(train_tiny_lora(tiny_base, tmp_path / "lora1", steps=1), "pixel", kind="lora", activate=True)
    registry.add(train_tiny_lora(tiny_base, tmp_path / "lora2", steps=1, seed=1), "pixel", kind="lora")
    live = LiveServer(engine)
    try:
        client = live.openai()
        models = {m.id: m.model_extra for m in client.models.list().data}
        assert models["pixel"]["active_version"] == "pixel@1" and models["professor-quill"]["active_version"] == "base"
        assert models["pixel@1"]["state"] == "active" and models["pixel@2"]["state"] == "candidate"
        pinned = client.chat.completions.create(model="pixel@2", messages=[{"role": "user", "content": "Hi"}])
        active = client.chat.completions.create(model="pixel", messages=[{"role": "user", "content": "Hi"}])
        assert pinned.system_fingerprint == "lora:pixel@2" and active.system_fingerprint == "lora:pixel@1"
        logged = engine.store.message(pinned.model_extra["personae_message_id"])
        assert logged["weights_version"] == "lora:pixel@2"
        with pytest.raises(openai.NotFoundError, match="pixel@9"):
            client.chat.completions.create(model="pixel@9", messages=[{"role": "user", "content": "Hi"}])
        with pytest.raises(openai.NotFoundError, match="a version is a number or 'base'"):
            client.chat.completions.create(model="pixel@v2", messages=[{"role": "user", "content": "Hi"}])
        bare = client.chat.completions.create(model="pixel@base", messages=[{"role": "user", "content": "Hi"}])
        assert bare.system_fingerprint == "base"
    finally:
        live.close()
