"""A live uvicorn server on 127.0.0.1 (random free port, in a thread) for the HTTP tests."""

from __future__ import annotations

import socket
import threading
import time


class LiveServer:
    """The app of an engine, served on loopback until close()."""

    def __init__(self, engine, keys: list[str] | None = None):
        import uvicorn

        from plugins.http.app import create_app

        self.app = create_app(engine, engine.settings, keys=keys or [])
        self.socket = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.socket.bind(("127.0.0.1", 0))  # loopback only: tests never listen beyond this machine
        self.port = self.socket.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        # As `personae serve` runs it: no uvicorn limit_concurrency (its 503 is plain text, closes the socket
        # with the body unread, which the client sees as a reset); the app bounds requests itself (admission.py).
        from plugins.http.deadline import with_header_deadline

        config = uvicorn.Config(self.app, log_level="warning", timeout_graceful_shutdown=1,
                                http=with_header_deadline(self.app.state.limits.max_header_seconds))
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.socket]}, daemon=True)
        self.thread.start()
        deadline = time.monotonic() + 20
        while not self.server.started:
            if time.monotonic() > deadline or not self.thread.is_alive():
                raise RuntimeError("the test server did not start")
            time.sleep(0.01)

    def openai(self, key: str = "none", **options):
        """An official openai client pointed at this server."""
        import openai

        return openai.OpenAI(base_url=self.url + "/v1", api_key=key, max_retries=0, timeout=600, **options)

    def close(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)
        self.socket.close()
