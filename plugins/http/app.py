"""The FastAPI app: the OpenAI-compatible API, feedback, metrics, health and the web chat page."""

from __future__ import annotations

import logging
import time
from contextlib import asynccontextmanager
from pathlib import Path

# FastAPI resolves endpoint annotations from module globals, so these imports live here; this
# module is imported only when the server starts, never by `personae --help`.
from fastapi import APIRouter, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, Response, StreamingResponse
from fastapi.staticfiles import StaticFiles
from starlette.exceptions import HTTPException as StarletteHTTPException

from plugins.http import auth, chat
from plugins.http.admission import Admission
from plugins.http.errors import APIError, validation_error
from plugins.http.limits import BodyLimit, Limits
from plugins.http.metrics import Metrics
from plugins.http.openai_doc import describe_errors
from plugins.http.openai_schema import ChatCompletionRequest, FeedbackRequest
from plugins.http.refusals import RefusalLog
from runtime.audit.report import latest_report_files
from runtime.characters import placeholder_avatar
from runtime.errors import PersonaeError

STATIC = Path(__file__).parent / "static"

log = logging.getLogger("personae.http")


class ReplyStreamingResponse(StreamingResponse):
    """A stream whose generator is closed however the client left (its clean-up cancels the reply)."""

    async def stream_response(self, send):
        try:
            await super().stream_response(send)
        finally:
            await self.body_iterator.aclose()


def create_app(engine, settings, keys: list[str] | None = None):
    """Build the app over an engine; `keys` defaults to $PERSONAE_API_KEYS."""
    keys = auth.api_keys() if keys is None else keys
    refusals = RefusalLog(engine.store)

    @asynccontextmanager
    async def lifespan(app):
        yield
        refusals.close()  # the refusals counted since the last flush go to the log too

    app = FastAPI(title="Personae", summary="Characters behind an OpenAI-compatible API", version="1",
                  lifespan=lifespan)
    app.state.refusals = refusals
    app.state.engine, app.state.settings, app.state.keys = engine, settings, keys
    metrics = app.state.metrics = Metrics(engine)
    limits = app.state.limits = Limits.of(settings.plugin_settings("http"))
    created = int(time.time())
    # Middleware added later wraps what came before. A body over the limit is refused before anything parses it.
    app.add_middleware(BodyLimit, limit=limits.max_body_bytes, seconds=limits.max_body_seconds)
    # Outside the body limit: a request over the concurrency limit holds no buffered body.
    app.add_middleware(Admission, limit=limits.max_concurrent_requests, refusals=refusals)
    # Outside both: a client without a key learns nothing, not even the limits.
    app.add_middleware(auth.KeyCheck, keys=keys)
    app.add_middleware(metrics.timing_middleware())

    cors = settings.plugin_settings("http").get("cors_origins")
    if cors:
        from fastapi.middleware.cors import CORSMiddleware

        app.add_middleware(CORSMiddleware, allow_origins=list(cors), allow_methods=["*"], allow_headers=["*"])

    # --- errors, all in OpenAI's shape -------------------------------------------------------

    @app.exception_handler(APIError)
    async def api_error(request, error: APIError):
        return JSONResponse(error.body(), status_code=error.status, headers=error.headers)

    @app.exception_handler(RequestValidationError)
    async def invalid_body(request, error: RequestValidationError):
        return await api_error(request, validation_error(list(error.errors())))

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request, error: StarletteHTTPException):
        code = "not_found" if error.status_code == 404 else None
        return await api_error(request, APIError(error.status_code, str(error.detail), code=code,
                                                 headers=dict(error.headers or {})))

    @app.exception_handler(PersonaeError)
    async def user_error(request, error: PersonaeError):
        return await api_error(request, APIError.of(error))

    @app.exception_handler(Exception)
    async def unexpected(request, error: Exception):
        # A bug: logged here with its traceback; the client learns only that it happened.
        log.error("%s %s failed", request.method, request.url.path, exc_info=error)
        return await api_error(request, APIError(500, "internal error; the server's log has the details",
                                                 type="server_error"))

    api = APIRouter()  # keys are checked for every path but the public ones by auth.KeyCheck

    # --- the OpenAI API --------------------------------------------------------------------

    @api.get("/v1/models")
    def models():
        return {"object": "list", "data": chat.model_list(engine, created)}

    @api.get("/v1/models/{model}")
    def model(model: str):
        character, _ = chat.resolve_model(engine, model)
        return next(m for m in chat.model_list(engine, created) if m["id"] in (model, character.id))

    starting = chat.Starting()

    async def respond(body, request: Request, regenerate: bool):
        started = time.perf_counter()
        replies = await chat.begin(engine, metrics, body, request.headers, regenerate, limits, starting, refusals)
        tokens = chat.TokenText(engine.base.tokenizer)
        if body.stream:
            return ReplyStreamingResponse(chat.stream(metrics, body, replies, started, tokens),
                                          media_type="text/event-stream",
                                          headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
        return await chat.complete(metrics, body, replies, started, tokens)

    @api.post("/v1/chat/completions")
    async def chat_completions(body: ChatCompletionRequest, request: Request):
        return await respond(body, request, regenerate=False)

    @api.post("/v1/regenerate")
    async def regenerate(body: ChatCompletionRequest, request: Request):
        """Re-roll the last reply of a logged conversation (a swipe); same body and answer as chat."""
        return await respond(body, request, regenerate=True)

    @api.post("/v1/feedback")
    def feedback(body: FeedbackRequest):
        user_id = f"{chat.PLATFORM}:{(body.user or '').strip() or 'anonymous'}"
        message = engine.store.message(body.message_id)
        if message is None:
            raise APIError(404, f"no logged message with id {body.message_id}", param="message_id",
                           code="message_not_found")
        if message["role"] != "assistant":
            raise APIError(400, f"message {body.message_id} is the user's, not a character's reply",
                           param="message_id")
        if body.value == 0:
            engine.store.remove_feedback(body.message_id, user_id)
        else:
            engine.store.add_feedback(body.message_id, user_id, body.value, source=chat.PLATFORM)
        metrics.feedback.labels(str(body.value)).inc()
        return {"ok": True, "message_id": body.message_id, "value": body.value, "user": user_id}

    # --- what the web page needs -------------------------------------------------------------

    @api.get("/v1/characters")
    def characters(user_name: str = "User"):
        listed = []
        for cid in engine.catalog.names():
            character = engine.catalog.characters[cid]
            greetings = character.greetings(user_name[:64] or "User")
            listed.append({
                "id": cid, "name": character.name, "description": character.render(character.description, user_name),
                "greeting": greetings[0] if greetings else "", "tags": list(character.tags),
                "avatar": f"/v1/characters/{cid}/avatar.png", "active_version": chat.active_version(engine, cid),
            })
        return {"object": "list", "data": listed}

    def character_or_404(character_id: str):
        character, _ = chat.resolve_model(engine, character_id)
        return character

    avatars: dict[str, bytes] = {}

    @api.get("/v1/characters/{character_id}/avatar.png")
    def avatar(character_id: str):
        character = character_or_404(character_id)
        if character.id not in avatars:
            avatars[character.id] = character.avatar_png or placeholder_avatar(character.name)
        return Response(avatars[character.id], media_type="image/png", headers={"Cache-Control": "max-age=300"})

    def audit_files(character) -> list[Path]:
        """The newest audit's files of a character."""
        return [Path(p) for p in latest_report_files(settings, character.id) or []]

    @api.get("/v1/characters/{character_id}/audits")
    def audits(character_id: str):
        character = character_or_404(character_id)
        files = audit_files(character)
        listed = [{"name": p.name, "kind": "image" if p.suffix.lower() == ".png" else "page",
                   "url": f"/v1/characters/{character.id}/audits/{p.name}"} for p in files if p.is_file()]
        return {"available": True, "files": listed, "run": files[0].parent.name if files else None,
                "message": "" if listed else f"no audits of {character.name} yet (personae audit {character.id})"}

    @api.get("/v1/characters/{character_id}/audits/{name}")
    def audit_file(character_id: str, name: str):
        character = character_or_404(character_id)
        # Only files of the newest report, by name: no path from the request reaches the disk.
        match = next((p for p in audit_files(character) if p.name == name and p.is_file()), None)
        if match is None:
            raise APIError(404, f"no audit file {name!r} for {character.id}", code="not_found")
        return FileResponse(match)

    # --- operations --------------------------------------------------------------------------

    @api.get("/metrics")
    def prometheus():
        text, content_type = metrics.render()
        return Response(text, media_type=content_type)

    app.include_router(api)

    # async: answered on the event loop even when every worker thread is busy with replies.
    @app.get("/healthz")
    async def healthz():
        generator = engine.generator_started
        return {"status": "ok", "characters": len(engine.catalog.names()), "model_loaded": generator is not None,
                "queue_depth": getattr(generator, "queue_depth", 0), "auth": bool(keys)}

    @app.get("/", include_in_schema=False)
    def index():
        return FileResponse(STATIC / "index.html", headers={"Cache-Control": "no-cache"})

    app.mount("/static", StaticFiles(directory=STATIC), name="static")
    describe_errors(app)
    return app
