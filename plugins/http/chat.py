"""Chat completions: model names to characters, requests to turns, replies to OpenAI responses."""

from __future__ import annotations

import asyncio
import json
import logging
import time
from urllib.parse import unquote

from plugins.http.errors import APIError
from runtime.chat.engine import Turn
from runtime.chat.streaming import StreamedReply
from runtime.errors import Busy, NotFound, PersonaeError
from runtime.refs import WeightsRef

PLATFORM = "http"
CONVERSATION_HEADER = "x-personae-conversation"
USER_NAME_HEADER = "x-personae-user-name"
# What a client sees of a bug: the server's log has the traceback.
GENERATION_FAILED = "generating the reply failed; the server's log has the details"

log = logging.getLogger("personae.http")


# --- model names -----------------------------------------------------------------------------


def resolve_model(engine, model: str):
    """'pixel', 'pixel@3' or 'pixel@base' -> (character, version or None); unknown ones are a 404."""
    try:
        ref = WeightsRef.parse(model)
        character = engine.catalog.get(ref.character)
        if isinstance(ref.version, int):
            if engine.registry is None:
                raise NotFound(f"no adapter registry is installed, so {character.id} has only its base weights "
                               f"(use model {character.id!r})")
            engine.registry.get(character.id, ref.version)
    except PersonaeError as error:
        raise APIError(404, f"The model {model!r} does not exist: {error}", param="model",
                       code="model_not_found") from None
    return character, ref.version


def active_version(engine, character_id: str) -> str:
    """The active weights of a character as 'pixel@3', or 'base'."""
    registry = engine.registry
    if registry is None:
        return "base"
    try:
        version = registry.active(character_id)
    except Exception:  # a broken registry entry must not hide the character
        return "base"
    return getattr(version, "ref", None) or "base"


def model_list(engine, created: int) -> list[dict]:
    """Every character, then every usable version of it as NAME@N."""
    models = []
    registry = engine.registry
    for cid in engine.catalog.names():
        character = engine.catalog.characters[cid]
        models.append({"id": cid, "object": "model", "created": created, "owned_by": "personae",
                       "name": character.name, "active_version": active_version(engine, cid)})
        if registry is None:
            continue
        try:
            versions = registry.versions(cid)
        except Exception:
            versions = []
        for version in versions:
            if getattr(version, "state", "") in ("active", "candidate", "retired"):
                models.append({"id": f"{cid}@{version.number}", "object": "model", "created": created,
                               "owned_by": "personae", "name": f"{character.name} v{version.number}",
                               "parent": cid, "state": version.state, "kind": getattr(version, "kind", "")})
    return models


# --- requests to turns -----------------------------------------------------------------------


def make_turn(engine, body, headers, character, version, regenerate: bool = False, limits=None):
    """The engine Turn of a request: who, which conversation, which history, which sampling."""
    if limits is not None:
        limits.check_messages(body.messages)
    user = (body.user or "").strip()
    conversation = (headers.get(CONVERSATION_HEADER) or "").strip()[:200]
    chat = [m for m in body.messages if m.role in ("user", "assistant")]
    # System messages are the client's own persona prompt; the character's card is the prompt here.
    text, history = "", None
    if not regenerate:
        if not chat or chat[-1].role != "user":
            raise APIError(400, "messages must end with the user's message (role 'user')", param="messages")
        text = chat[-1].text()
        if not text.strip():
            raise APIError(400, "the last user message is empty", param="messages")
        if len(chat) > 1:
            # Clients like SillyTavern and Open WebUI send the whole chat each time: it is the history.
            history = [{"role": m.role, "content": m.text()} for m in chat[:-1]]
        elif not (conversation or user):
            history = []  # a one-off request: no conversation to continue
    elif not (conversation or user):
        raise APIError(400, f"regenerate needs a conversation: send the {CONVERSATION_HEADER} header or 'user'",
                       param="user")
    name = next((m.name for m in reversed(chat) if m.role == "user" and m.name), None)
    # The header is percent-encoded (header values are Latin-1 only; names need not be).
    user_name = (name or unquote(headers.get(USER_NAME_HEADER) or "") or "User").strip()[:64] or "User"
    sampling = body.sampling()
    max_tokens = sampling["max_new_tokens"]
    room = engine.settings.context_tokens - 64
    if max_tokens is not None and max_tokens > room:
        raise APIError(400, f"max_tokens {max_tokens} leaves no room for the prompt (context_tokens is "
                       f"{engine.settings.context_tokens}); ask for at most {room}", param="max_tokens")
    return Turn(platform=PLATFORM, channel=conversation or f"user:{user or 'anonymous'}",
                user_id=f"http:{user or 'anonymous'}", text=text, user_name=user_name, character=character,
                sampling=sampling, version=version, history=history)


def start_reply(engine, turn, character, regenerate: bool):
    """Start the engine's reply (blocking: run it in a worker thread)."""
    if regenerate:
        return engine.regenerate(turn)
    if turn.history is None:
        # Continuing a logged conversation: it opens with the character's first message, as in the console.
        engine.log_greeting(turn, character)
    return engine.reply(turn)


async def begin(engine, metrics, body, headers, regenerate: bool = False, limits=None):
    """Resolve, validate and start a reply; errors become OpenAI-shaped API errors."""
    from starlette.concurrency import run_in_threadpool

    character, version = resolve_model(engine, body.model)
    turn = make_turn(engine, body, headers, character, version, regenerate, limits)
    try:
        return await run_in_threadpool(start_reply, engine, turn, character, regenerate)
    except PersonaeError as error:  # busy, nothing to re-roll, a version the registry refuses, no room
        metrics.failed(character.id, "busy" if isinstance(error, Busy) else "invalid")
        raise APIError.of(error) from None


# --- streaming a blocking reply into the event loop --------------------------------------------


class TrimmedText:
    """Streamed text as it will be logged: the generator already cut it at any stop string; no
    leading whitespace, and trailing whitespace held back until more text follows."""

    def __init__(self):
        self.pending = ""
        self.started = False

    def feed(self, piece: str, last: bool = False) -> str:
        """Text that is safe to send now (`last`: the reply ended, drop what is held back)."""
        text = self.pending + piece
        if not self.started:
            text = text.lstrip()
        out = text.rstrip()
        self.pending = "" if last else text[len(out):]
        self.started = self.started or bool(out)
        return out


class Bridge:
    """An engine Reply streamed into the event loop as the text it will log; notes its first piece's time."""

    def __init__(self, reply):
        self.pieces = StreamedReply(lambda: reply)
        self.trimmed = TrimmedText()
        self.first_piece_at: float | None = None

    async def __aiter__(self):
        pieces, last = aiter(self.pieces), False
        while not last:
            try:
                piece = await anext(pieces)
            except StopAsyncIteration:
                piece, last = "", True
            text = self.trimmed.feed(piece, last)
            if text:
                self.first_piece_at = self.first_piece_at or time.perf_counter()
                yield text


# --- responses ---------------------------------------------------------------------------------


def usage(reply) -> dict:
    """OpenAI's usage block of a finished reply."""
    prompt, completion = reply.prompt_tokens, reply.stream.completion_tokens
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}


def finish_reason(reply) -> str:
    """OpenAI's finish_reason: 'length' when max_tokens cut the reply, else 'stop'."""
    return "length" if reply.stream.finish_reason == "length" else "stop"


def record(metrics, reply, bridge, started: float) -> None:
    """Metrics of a finished reply."""
    now = time.perf_counter()
    ttft = bridge.first_piece_at - started if bridge.first_piece_at is not None else None
    metrics.finished(reply.character.id, reply.prompt_tokens, reply.stream.completion_tokens, ttft, now - started)


async def complete(metrics, body, reply, started: float) -> dict:
    """A non-streaming chat.completion."""
    bridge = Bridge(reply)
    metrics.in_flight.inc()
    try:
        async for _ in bridge:
            pass
    except asyncio.CancelledError:
        reply.cancel()
        raise
    except Exception:
        metrics.failed(reply.character.id, "error")
        log.exception("generating reply %s failed", reply.user_message["id"])
        raise APIError(500, GENERATION_FAILED, type="server_error") from None
    finally:
        metrics.in_flight.dec()
    record(metrics, reply, bridge, started)
    message_id = reply.message["id"]
    return {
        "id": f"chatcmpl-{message_id}",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": body.model,
        "choices": [{"index": 0, "message": {"role": "assistant", "content": reply.text},
                     "finish_reason": finish_reason(reply), "logprobs": None}],
        "usage": usage(reply),
        "personae_message_id": message_id,
        "personae_weights_version": reply.weights.version,
        "system_fingerprint": reply.weights.version,
    }


async def stream(metrics, body, reply, started: float):
    """Server-sent events of chat.completion.chunk objects, ending with `data: [DONE]`."""
    # The reply's own id is known only once it is logged; chunks carry the turn's id until then.
    chunk_id = f"chatcmpl-turn{reply.user_message['id']}"
    created = int(time.time())

    def event(delta: dict | None, finish: str | None = None, **extra) -> str:
        choices = [] if delta is None else [{"index": 0, "delta": delta, "finish_reason": finish, "logprobs": None}]
        payload = {"id": chunk_id, "object": "chat.completion.chunk", "created": created, "model": body.model,
                   "system_fingerprint": reply.weights.version, "choices": choices, **extra}
        return f"data: {json.dumps(payload, ensure_ascii=False)}\n\n"

    bridge = Bridge(reply)
    completed = False
    metrics.in_flight.inc()
    try:
        yield event({"role": "assistant", "content": ""})
        try:
            async for text in bridge:
                yield event({"content": text})
        except Exception:
            metrics.failed(reply.character.id, "error")
            log.exception("generating reply %s failed", reply.user_message["id"])
            error_body = {"message": GENERATION_FAILED, "type": "server_error",
                          "param": None, "code": None}
            yield f"data: {json.dumps({'error': error_body})}\n\n"
            completed = True
            return
        completed = True
        record(metrics, reply, bridge, started)
        message_id = reply.message["id"] if reply.message else None
        yield event({}, finish_reason(reply), personae_message_id=message_id)
        if body.stream_options and body.stream_options.include_usage:
            yield event(None, usage=usage(reply), personae_message_id=message_id)
        yield "data: [DONE]\n\n"
    finally:
        metrics.in_flight.dec()
        if not completed:
            # The client went away mid-stream: stop generating; the engine logs nothing for it.
            reply.cancel()
            metrics.failed(reply.character.id, "cancelled")
