"""Prometheus metrics of the HTTP API (prometheus_client, one registry per app)."""

from __future__ import annotations

TTFT_BUCKETS = (0.025, 0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30)
REPLY_BUCKETS = (0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60, 120)


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

    def render(self) -> tuple[bytes, str]:
        """The exposition text and its content type."""
        from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

        return generate_latest(self.registry), CONTENT_TYPE_LATEST
