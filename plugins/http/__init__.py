"""The HTTP platform: an OpenAI-compatible API and a web chat page (`personae serve --http HOST:PORT`)."""

from __future__ import annotations

import threading

from runtime.hookspecs import hookimpl


class HttpPlatform:
    """Serves the API with uvicorn; started by `personae serve --http` or `[http] listen` in personae.toml."""

    name = "http"

    def __init__(self):
        self.server = None
        self.started = threading.Event()  # set once listening (port set), or once run() gave up (port None)
        self.port: int | None = None

    @staticmethod
    def listen(settings, options) -> str | None:
        """The HOST:PORT asked for, if any."""
        return (options or {}).get("http") or settings.plugin_settings("http").get("listen")

    def wanted(self, settings, options) -> bool:
        return bool(self.listen(settings, options))

    def check(self, settings, options) -> list[str]:
        import importlib.util

        from plugins.http import auth

        try:
            host, _ = auth.parse_listen(self.listen(settings, options))
        except auth.ListenError as error:
            return [str(error)]
        problems = auth.listen_problems(host, auth.api_keys())
        for module in ("fastapi", "uvicorn", "prometheus_client"):
            if importlib.util.find_spec(module) is None:
                problems.append(f"the Python package {module!r} is missing; pip install {module}")
        return problems

    def run(self, engine, settings, options) -> None:
        """Serve until stop(); refuses to start on a non-loopback address without API keys."""
        import uvicorn

        from plugins.http import auth
        from plugins.http.app import create_app

        host, port = auth.parse_listen(self.listen(settings, options))
        problems = auth.listen_problems(host, auth.api_keys())
        if problems:
            raise RuntimeError(problems[0])
        try:
            engine.generator  # load the model before the first request, not during it
            from plugins.http.deadline import with_header_deadline

            app = create_app(engine, settings)
            config = uvicorn.Config(app, host=host, port=port, timeout_graceful_shutdown=5,
                                    http=with_header_deadline(app.state.limits.max_header_seconds),
                                    log_level=settings.plugin_settings("http").get("log_level", "info"))
            self.server = uvicorn.Server(config)
            threading.Thread(target=self._watch_start, daemon=True).start()
            self.server.run()
        finally:
            self.started.set()

    def _watch_start(self) -> None:
        server = self.server
        while not server.started and not server.should_exit:
            threading.Event().wait(0.02)
        if server.started and server.servers:
            self.port = server.servers[0].sockets[0].getsockname()[1]
        self.started.set()

    def stop(self) -> None:
        if self.server is not None:
            self.server.should_exit = True


@hookimpl
def register_platforms(register):
    register(HttpPlatform())
