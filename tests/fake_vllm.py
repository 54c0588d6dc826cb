"""A stand-in for a vLLM OpenAI-compatible server, stdlib only, run as a real process by the keeper tests.

It takes vLLM's arguments (--model, --host, --port; others ignored), answers /health, /v1/models (with the
model folder as `root`, like vLLM), LoRA loads, and streamed /v1/completions whose text names its port, so a
test sees which server answered. FAKE_PIDS: a file each start appends its pid to. FAKE_GATE: from the second
start on, wait for that file to exist before listening (a test holds a restart back with it).
"""

from __future__ import annotations

import http.server
import json
import os
import sys
import time


def option(name: str) -> str:
    return sys.argv[sys.argv.index(name) + 1]


MODEL, HOST, PORT = option("--model"), option("--host"), int(option("--port"))


class Handler(http.server.BaseHTTPRequestHandler):
    def reply(self, body: bytes, content_type="application/json") -> None:
        self.send_response(200)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self):  # noqa: N802 - http.server's naming
        if self.path == "/health":
            self.reply(b"")
        elif self.path == "/v1/models":
            self.reply(json.dumps({"object": "list", "data": [{"id": MODEL, "root": MODEL, "parent": None}]}).encode())
        else:
            self.send_error(404)

    def do_POST(self):  # noqa: N802
        request = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))) or b"{}")
        if self.path in ("/v1/load_lora_adapter", "/v1/unload_lora_adapter"):
            self.reply(b"Success")
            return
        if self.path != "/v1/completions":
            self.send_error(404)
            return
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.end_headers()  # HTTP/1.0: the stream ends when the connection closes
        chunks = [{"choices": [{"index": 0, "text": f"fake vLLM on port {PORT} for {request['model']}",
                                "finish_reason": None}]},
                  {"choices": [{"index": 0, "text": "", "finish_reason": "stop"}]},
                  {"choices": [], "usage": {"prompt_tokens": len(request["prompt"]), "completion_tokens": 6}}]
        for chunk in chunks:
            self.wfile.write(f"data: {json.dumps(chunk)}\n\n".encode())
        self.wfile.write(b"data: [DONE]\n\n")

    def log_message(self, *args):
        pass


def main() -> None:
    starts = 0
    if os.environ.get("FAKE_PIDS"):
        with open(os.environ["FAKE_PIDS"], "a+") as pids:
            pids.seek(0)
            starts = len(pids.read().split())
            pids.write(f"{os.getpid()}\n")
    print(f"fake vLLM start {starts + 1} on {HOST}:{PORT} serving {MODEL}", flush=True)
    gate = os.environ.get("FAKE_GATE")
    while gate and starts and not os.path.exists(gate):
        time.sleep(0.1)
    http.server.ThreadingHTTPServer((HOST, PORT), Handler).serve_forever()


if __name__ == "__main__":
    main()
