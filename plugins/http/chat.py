"""Chat completions: model names to characters, requests to turns, replies to OpenAI responses."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from urllib.parse import unquote

from plugins.http import tools
from plugins.http.errors import APIError
from runtime.chat.engine import Turn
from runtime.chat.streaming import StreamedReply
from runtime.errors import Busy, NotFound, PersonaeError
from runtime.generation import structured
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
    problem = body.problem()
    if problem is not None:
        raise APIError(400, problem[1], param=problem[0], code="unsupported_parameter")
    if body.n > engine.settings.max_batch:
        raise APIError(400, f"n={body.n} is more choices than this server generates at once (max_batch is "
                       f"{engine.settings.max_batch}); ask for at most {engine.settings.max_batch}", param="n")
    if limits is not None:
        limits.check_messages(body.messages)
    user = (body.user or "").strip()
    conversation = (headers.get(CONVERSATION_HEADER) or "").strip()[:200]
    chat = tools.chat_of(body.messages)
    # System messages are the client's own persona prompt; the character's card is the prompt here.
    text, history = "", None
    if not regenerate:
        if not chat or chat[-1]["role"] != "user":
            raise APIError(400, "messages must end with the user's message (role 'user') or a tool result",
                           param="messages")
        text = chat[-1]["content"]
        if not text.strip():
            raise APIError(400, "the last user message is empty", param="messages")
        if len(chat) > 1:
            # Clients like SillyTavern and Open WebUI send the whole chat each time: it is the history.
            history = chat[:-1]
        elif not (conversation or user):
            history = []  # a one-off request: no conversation to continue
    elif not (conversation or user):
        raise APIError(400, f"regenerate needs a conversation: send the {CONVERSATION_HEADER} header or 'user'",
                       param="user")
    name = next((m.name for m in reversed(body.messages) if m.role == "user" and m.name), None)
    # The header is percent-encoded (header values are Latin-1 only; names need not be).
    user_name = (name or unquote(headers.get(USER_NAME_HEADER) or "") or "User").strip()[:64] or "User"
    sampling = body.sampling()
    check_structure(engine, sampling)
    max_tokens = sampling["max_new_tokens"]
    room = engine.settings.context_tokens - 64
    if max_tokens is not None and max_tokens > room:
        name = "max_completion_tokens" if body.max_completion_tokens else "max_tokens"
        raise APIError(400, f"{name} {max_tokens} leaves no room for the prompt (context_tokens is "
                       f"{engine.settings.context_tokens}); ask for at most {room}", param=name)
    note, depth = authors_note(body.messages)
    plan = body.tool_plan()
    return Turn(platform=PLATFORM, channel=conversation or f"user:{user or 'anonymous'}",
                user_id=f"http:{user or 'anonymous'}", text=text, user_name=user_name, character=character,
                sampling=sampling, version=version, history=history, client_owns_chat=True,
                authors_note=note, authors_note_depth=depth, prompt_addition=plan.instruction() if plan else "")


def authors_note(messages) -> tuple[str, int]:
    """System messages inside the chat (SillyTavern's Author's Note, injected at a depth) and that depth.

    A leading system prompt is the client's own persona prompt (the card is the prompt here); one that
    comes after the chat began is an instruction at a depth, kept where the client put it.
    """
    chat_roles, note_roles = ("user", "assistant"), ("system", "developer")
    began = next((i for i, m in enumerate(messages) if m.role in chat_roles), len(messages))
    notes = [i for i in range(began + 1, len(messages))
             if messages[i].role in note_roles and messages[i].text().strip()]
    if not notes:
        return "", 0
    # Several in-chat system messages go in together, at the depth of the deepest.
    depth = sum(m.role in chat_roles for m in messages[notes[0]:])
    return "\n".join(messages[i].text().strip() for i in notes), depth


def check_structure(engine, sampling: dict) -> None:
    """logit_bias names tokens this model has; a response_format's vocabulary table is built before generating."""
    if not (sampling["logit_bias"] or sampling["response_format"]):
        return
    tokenizer = engine.base.tokenizer
    vocabulary = len(tokenizer)
    unknown = sorted(t for t in sampling["logit_bias"] or {} if t >= vocabulary)
    if unknown:
        raise APIError(400, f"logit_bias names token {unknown[0]}, but this model's tokens are 0 to {vocabulary - 1}",
                       param="logit_bias")
    if sampling["response_format"] and engine.settings.backend != "vllm":  # vLLM constrains on its side
        structured.warm(tokenizer)


def start_replies(engine, turn, character, regenerate: bool, n: int):
    """Start the engine's `n` replies, generated together (blocking: run it in a worker thread)."""
    if regenerate:
        return engine.regenerations(turn, n)
    if turn.history is None:
        # Continuing a logged conversation: it opens with the character's first message, as in the console.
        engine.log_greeting(turn, character)
    return engine.replies(turn, n)


class Starting:
    """Requests between the checks and the generator's queue (logging their turn, building the prompt)."""

    def __init__(self):
        self.count = 0


async def begin(engine, metrics, body, headers, regenerate: bool = False, limits=None, starting=None,
                refusals=None):
    """Resolve, validate and start the replies (one per choice); errors become OpenAI-shaped API errors."""
    from starlette.concurrency import run_in_threadpool

    character, version = resolve_model(engine, body.model)
    turn = make_turn(engine, body, headers, character, version, regenerate, limits)
    # A queue that is full, or will be once the requests already starting reach it, refuses here, on the event
    # loop, in microseconds: in a flood, going through the worker threads and the log's lock only to be
    # refused there took seconds (tests/test_floods.py).
    starting = starting or Starting()
    refusal = getattr(engine.generator_started, "refusal", None)
    busy = refusal(starting.count) if refusal is not None else None
    route = "/v1/regenerate" if regenerate else "/v1/chat/completions"
    if busy is not None:
        metrics.failed(character.id, "busy")
        error = APIError.of(busy)
        if refusals is not None:
            refusals.record(error.status, error.code, route, character.id)
        raise error
    starting.count += body.n
    try:
        return await run_in_threadpool(start_replies, engine, turn, character, regenerate, body.n)
    except PersonaeError as error:  # busy, nothing to re-roll, a version the registry refuses, no room
        metrics.failed(character.id, "busy" if isinstance(error, Busy) else "invalid")
        refused = APIError.of(error)
        if refusals is not None and refused.status in (429, 503):
            refusals.record(refused.status, refused.code, route, character.id)
        raise refused from None
    finally:
        starting.count -= body.n


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

    def __init__(self, reply, whole: bool = False):
        self.pieces = StreamedReply(lambda: reply, whole)
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


class Choice:
    """One choice of a response: an engine Reply streamed as the text it will log, and its unsent logprobs."""

    def __init__(self, index: int, reply, tokens, whole: bool = False):
        self.index, self.reply, self.tokens, self.whole = index, reply, tokens, whole
        self.bridge = Bridge(reply, whole)  # whole: not streamed, so the guard may still re-sample it
        self.logprobs_sent = 0

    def logprobs(self) -> dict | None:
        """OpenAI's logprobs block of the tokens made since the last call (None when not asked for)."""
        if self.reply.stream.request.sampling.logprobs is None:
            return None
        entries = self.reply.stream.logprobs[self.logprobs_sent:]
        self.logprobs_sent += len(entries)
        return {"content": [self.tokens.entry(e) for e in entries], "refusal": None}

    @property
    def message_id(self) -> int | None:
        return self.reply.message["id"] if self.reply.message else None

    def finish_reason(self, plan=None) -> str:
        """OpenAI's finish_reason: 'length' when max_tokens cut the reply, 'tool_calls' for a call, else 'stop'."""
        if self.reply.stream.finish_reason == "length":
            return "length"
        return "tool_calls" if plan else "stop"

    def message(self, plan) -> dict:
        """The choice's assistant message: its text, or the function call it makes."""
        if plan is None:
            return {"role": "assistant", "content": self.reply.text}
        name, arguments = plan.call(self.reply.text)
        return {"role": "assistant", "content": None, "tool_calls": [
            {"id": tools.call_id(), "type": "function", "function": {"name": name, "arguments": arguments}}]}


class TokenText:
    """Token ids as OpenAI's logprob entries: the token's text and its exact bytes."""

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer
        self.byte_of = {}
        decoder = getattr(getattr(tokenizer, "backend_tokenizer", None), "decoder", None)
        if type(decoder).__name__ == "ByteLevel":  # GPT-2, SmolLM2, Llama 3: a token's characters stand for bytes
            from transformers.convert_slow_tokenizer import bytes_to_unicode

            self.byte_of = {char: byte for byte, char in bytes_to_unicode().items()}

    def item(self, token: int, logprob: float) -> dict:
        text = self.tokenizer.decode([token])
        piece = self.tokenizer.convert_ids_to_tokens(token)
        if piece and all(char in self.byte_of for char in piece):
            raw = [self.byte_of[char] for char in piece]
        else:
            raw = list(text.encode("utf-8"))
        return {"token": text, "logprob": max(logprob, -9999.0), "bytes": raw}  # JSON has no -inf

    def entry(self, scored) -> dict:
        return {**self.item(scored.token, scored.logprob),
                "top_logprobs": [self.item(token, logprob) for token, logprob in scored.top]}


def usage(replies) -> dict:
    """OpenAI's usage block of finished replies to one prompt (the prompt counted once)."""
    prompt = replies[0].prompt_tokens
    completion = sum(reply.stream.completion_tokens for reply in replies)
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}


def record(metrics, choice, started: float) -> None:
    """Metrics of a finished reply."""
    reply, bridge = choice.reply, choice.bridge
    now = time.perf_counter()
    first = reply.stream.first_token_at if choice.whole else bridge.first_piece_at  # whole: arrives all at once
    ttft = first - started if first is not None else None
    metrics.finished(reply.character.id, reply.prompt_tokens, reply.stream.completion_tokens, ttft, now - started)


def cancel(choices) -> None:
    """The client went away: stop every reply still generating (the engine logs nothing for them)."""
    for choice in choices:
        choice.reply.cancel()


async def complete(metrics, body, replies, started: float, tokens) -> dict:
    """A non-streaming chat.completion with one choice per reply."""
    choices = [Choice(index, reply, tokens, whole=True) for index, reply in enumerate(replies)]

    async def drain(choice):
        async for _ in choice.bridge:
            pass

    metrics.in_flight.inc()
    try:
        await asyncio.gather(*(drain(choice) for choice in choices))
    except asyncio.CancelledError:
        cancel(choices)
        raise
    except Exception:
        cancel(choices)
        metrics.failed(replies[0].character.id, "error")
        log.exception("generating reply %s failed", replies[0].user_message["id"])
        raise APIError(500, GENERATION_FAILED, type="server_error") from None
    finally:
        metrics.in_flight.dec()
    for choice in choices:
        record(metrics, choice, started)
    first, plan = replies[0], body.tool_plan()
    return {
        "id": f"chatcmpl-{choices[0].message_id}",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": body.model,
        "choices": [{"index": c.index, "message": c.message(plan),
                     "finish_reason": c.finish_reason(plan), "logprobs": c.logprobs(),
                     "personae_message_id": c.message_id} for c in choices],
        "usage": usage(replies),
        "personae_message_id": choices[0].message_id,
        "personae_weights_version": first.weights.version,
        "system_fingerprint": first.weights.version,
    }


async def merged(choices):
    """(choice, text) as any choice makes text, and (choice, None) when it ends; a choice's error is raised."""
    queue: asyncio.Queue = asyncio.Queue()

    async def pump(choice):
        try:
            async for text in choice.bridge:
                await queue.put((choice, text))
            await queue.put((choice, None))
        except Exception as error:  # handed to the consumer, which ends the whole response
            await queue.put((choice, error))

    tasks = [asyncio.create_task(pump(choice)) for choice in choices]
    try:
        for _ in range(len(choices)):
            while True:
                choice, item = await queue.get()
                if isinstance(item, Exception):
                    raise item
                yield choice, item
                if item is None:
                    break
    finally:
        for task in tasks:
            task.cancel()


async def stream(metrics, body, replies, started: float, tokens):
    """Server-sent events of chat.completion.chunk objects, ending with `data: [DONE]`."""
    # The replies' own ids are known only once they are logged; chunks carry the turn's id until then.
    first = replies[0]
    chunk_id = f"chatcmpl-turn{first.user_message['id']}"
    created = int(time.time())
    choices = [Choice(index, reply, tokens) for index, reply in enumerate(replies)]

    def event(choice=None, delta=None, finish: str | None = None, logprobs=None, **extra) -> str:
        listed = [] if choice is None else [{"index": choice.index, "delta": delta, "finish_reason": finish,
                                             "logprobs": logprobs}]
        payload = {"id": chunk_id, "object": "chat.completion.chunk", "created": created, "model": body.model,
                   "system_fingerprint": first.weights.version, "choices": listed, **extra}
        return f"data: {json.dumps(payload, ensure_ascii=False)}\n\n"

    plan = body.tool_plan()
    calls = {choice.index: tools.StreamedCall(plan) for choice in choices} if plan else {}
    completed = False
    metrics.in_flight.inc()
    try:
        for choice in choices:
            yield event(choice, {"role": "assistant", "content": None if plan else ""})
        try:
            async with contextlib.aclosing(merged(choices)) as pieces:
                async for choice, text in pieces:
                    if text is not None:
                        delta = calls[choice.index].delta(text) if plan else {"content": text}
                        if delta:
                            yield event(choice, delta, logprobs=choice.logprobs())
                        continue
                    last = calls[choice.index].rest(choice.reply.text) if plan else None
                    if last:
                        yield event(choice, last, logprobs=choice.logprobs())
                    # Exactly one chunk per choice carries its finish_reason (and the rest of its logprobs).
                    record(metrics, choice, started)
                    yield event(choice, {}, choice.finish_reason(plan), choice.logprobs(),
                                personae_message_id=choice.message_id)
        except Exception:
            cancel(choices)
            metrics.failed(first.character.id, "error")
            log.exception("generating reply %s failed", first.user_message["id"])
            error_body = {"message": GENERATION_FAILED, "type": "server_error",
                          "param": None, "code": None}
            yield f"data: {json.dumps({'error': error_body})}\n\n"
            completed = True
            return
        completed = True
        if body.stream_options and body.stream_options.include_usage:
            yield event(usage=usage(replies), personae_message_id=choices[0].message_id)
        yield "data: [DONE]\n\n"
    finally:
        metrics.in_flight.dec()
        if not completed:
            # The client went away mid-stream: stop generating; the engine logs nothing for those replies.
            cancel(choices)
            metrics.failed(first.character.id, "cancelled")
