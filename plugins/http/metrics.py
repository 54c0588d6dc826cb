"""Prometheus metrics of the HTTP API (prometheus_client, one registry per app)."""

from __future__ import annotations

# Fine enough at the top that a p95 of 17 s lands between 15 and 20 s, not anywhere in 10-30 s.
TTFT_BUCKETS = (0.025, 0.05, 0.1, 0.25, 0.5, 0.75, 1, 1.5, 2, 3, 5, 7.5, 10, 15, 20, 30, 45, 60, 120)
REPLY_BUCKETS = (0.1, 0.25, 0.5, 1, 2, 3, 5, 7.5, 10, 15, 20, 30, 45, 60, 90, 120, 180, 300, 600)
REQUEST_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 20, 30, 60, 120, 300, 600)


class Metrics:
    """Requests, tokens, tokens/s, queue depth and time to first token, per character."""

    def __init__(self, engine):
        from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

        # Its own registry: several apps (tests, benchmarks) may live in one process.
        self.registry = CollectorRegistry()
        self.requests = Counter("personae_http_requests", "Chat requests by character and outcome",
                                ["character", "status"], registry=self.registry)
        self.completion_tokens = Counter("personae_completion_tokens", "Tokens generated",
                                         ["character"], registry=self.registry)
        self.prompt_tokens = Counter("personae_prompt_tokens", "Prompt tokens read", ["character"],
                                     registry=self.registry)
        self.tokens_per_second = Gauge("personae_tokens_per_second",
                                       "Decode speed of the latest finished reply", ["character"],
                                       registry=self.registry)
        self.ttft = Histogram("personae_time_to_first_token_seconds", "Time from request to first token",
                              ["character"], buckets=TTFT_BUCKETS, registry=self.registry)
        self.reply_seconds = Histogram("personae_reply_seconds", "Time from request to the reply's end",
                                       ["character"], buckets=REPLY_BUCKETS, registry=self.registry)
        self.request_seconds = Histogram(
            "personae_http_request_seconds", "End-to-end latency of every HTTP request, from its arrival to the "
            "last byte of its response (streams included)", ["route", "status"], buckets=REQUEST_BUCKETS,
            registry=self.registry)
        self.in_flight = Gauge("personae_http_streams_in_flight", "Replies being generated for HTTP clients",
                               registry=self.registry)
        self.feedback = Counter("personae_feedback", "Feedback received", ["value"], registry=self.registry)
        queue_depth = Gauge("personae_queue_depth", "Requests waiting for the generator", registry=self.registry)
        # Read at scrape time; a generator not started yet (model not loaded) has an empty queue.
        queue_depth.set_function(lambda: getattr(engine.generator_started, "queue_depth", 0) or 0)

    def finished(self, character: str, prompt_tokens: int, completion_tokens: int, ttft: float | None,
                 seconds: float) -> None:
        """Record one completed reply."""
        self.requests.labels(character, "ok").inc()
        self.prompt_tokens.labels(character).inc(prompt_tokens)
        self.completion_tokens.labels(character).inc(completion_tokens)
        if ttft is not None:
            self.ttft.labels(character).observe(ttft)
            decoding = seconds - ttft
            if completion_tokens > 1 and decoding > 0:
                self.tokens_per_second.labels(character).set((completion_tokens - 1) / decoding)
        self.reply_seconds.labels(character).observe(seconds)

    def failed(self, character: str, status: str) -> None:
        """Record a request that did not complete (busy, not_found, cancelled, error...)."""
        self.requests.labels(character or "unknown", status).inc()

    def timing_middleware(self):
        """An ASGI middleware class that observes request_seconds by route template and status."""
        histogram = self.request_seconds

        class Timing:
            def __init__(self, app):
                self.app = app

            async def __call__(self, scope, receive, send):
                if scope["type"] != "http":
                    return await self.app(scope, receive, send)
                import time

                started, status = time.perf_counter(), [500]

                async def sending(message):
                    if message["type"] == "http.response.start":
                        status[0] = message["status"]
                    await send(message)

                try:
                    await self.app(scope, receive, sending)
                finally:
                    # The route's template (/v1/characters/{character_id}/...), never the raw path:
                    # a client must not be able to mint new label values.
                    route = getattr(scope.get("route"), "path", None) or "other"
                    histogram.labels(route, str(status[0])).observe(time.perf_counter() - started)

        return Timing

    def render(self) -> tuple[bytes, str]:
        """The exposition text and its content type."""
        from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

        return generate_latest(self.registry), CONTENT_TYPE_LATEST
