"""The OpenAPI document says what the server answers: 400/401/404/408/413/429/503 in OpenAI's error shape, never 422."""

from __future__ import annotations

ERROR_SCHEMA = {
    "title": "Error",
    "type": "object",
    "required": ["error"],
    "properties": {"error": {"type": "object", "required": ["message", "type"], "properties": {
        "message": {"type": "string"}, "type": {"type": "string"},
        "param": {"type": ["string", "null"]}, "code": {"type": ["string", "null"]}}}},
}
WHY = {
    "400": "The request is malformed or a value is out of range; the message names the field",
    "401": "A valid API key is required (only when keys are configured)",
    "404": "No such character, version, message or file",
    "408": "The request body did not arrive within [plugins.http] max_body_seconds; the connection closes",
    "413": "The request body is larger than [plugins.http] max_body_bytes",
    "429": "The generator is busy; retry after the Retry-After header's seconds",
    "500": "A bug; the body says only that it happened, the server's log has the details",
    "503": "The server is working on [plugins.http] max_concurrent_requests requests; retry after Retry-After",
}


def describe_errors(app) -> None:
    """Replace FastAPI's 422 with the statuses each route really answers."""
    from fastapi.openapi.utils import get_openapi

    def openapi():
        if app.openapi_schema is None:
            schema = get_openapi(title=app.title, version=app.version, summary=app.summary, routes=app.routes)
            schema.setdefault("components", {}).setdefault("schemas", {})["Error"] = ERROR_SCHEMA
            for schema_name in ("HTTPValidationError", "ValidationError"):
                schema["components"]["schemas"].pop(schema_name, None)
            for path, operations in schema.get("paths", {}).items():
                for method, operation in operations.items():
                    operation["responses"] = {**operation.get("responses", {}),
                                              **_error_responses(path, method)}
                    operation["responses"].pop("422", None)
                    _success(path, operation)
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi


# What a 200 really is where it is not JSON (schemathesis checks the Content-Type against these).
SUCCESS_TYPES = {
    "/metrics": {"text/plain": {"schema": {"type": "string"}}},
    "/v1/characters/{character_id}/avatar.png": {"image/png": {"schema": {"type": "string", "format": "binary"}}},
    "/v1/characters/{character_id}/audits/{name}": {"*/*": {"schema": {"type": "string", "format": "binary"}}},
}
STREAMING = {"text/event-stream": {"schema": {"type": "string"}}}


def _success(path: str, operation: dict) -> None:
    """Document the 200's real media types: files, metrics, and the SSE stream chat may answer."""
    ok = operation.get("responses", {}).get("200")
    if ok is None:
        return
    if path in SUCCESS_TYPES:
        ok["content"] = SUCCESS_TYPES[path]
    elif path in ("/v1/chat/completions", "/v1/regenerate"):
        ok["content"] = {**ok.get("content", {}), **STREAMING}


def _error_responses(path: str, method: str) -> dict:
    """The error statuses of one operation."""
    if path == "/healthz":
        return {}
    statuses = ["401", "500", "503"]
    if method == "post":
        statuses += ["400", "408", "413"]
    if "{" in path or path in ("/v1/chat/completions", "/v1/regenerate", "/v1/feedback"):
        statuses.append("404")
    if path in ("/v1/chat/completions", "/v1/regenerate"):
        statuses.append("429")
    if path == "/v1/characters":
        statuses.append("400")  # a bad user_name query value
    ref = {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}
    return {status: {"description": WHY[status], "content": ref} for status in sorted(set(statuses))}
