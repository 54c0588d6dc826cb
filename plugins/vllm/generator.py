"""The vLLM backend's generator: Personae builds prompts (token ids), vLLM servers generate.

Registry versions are loaded into every endpoint at run time (/v1/load_lora_adapter) under their
ref ('pixel@3'); full fine-tunes go to a vLLM endpoint of their own when configured (full.py);
versions vLLM cannot serve (hybrid LoRA with modules_to_save, full fine-tunes without an endpoint)
are answered by the local generator, and every stream says who served it (`served_by`, logged in meta).
"""

from __future__ import annotations

import json
import logging
import threading
from pathlib import Path

import httpx

from plugins.vllm.endpoints import BackendUnavailable, Endpoint, EndpointPool, describe
from plugins.vllm.full import FullEndpoints
from runtime.errors import PersonaeError
from runtime.generation.types import BASE_ADAPTER, GeneratorBusy, ReplyStream, Request, TokenLogprob

log = logging.getLogger("personae.vllm")

HYBRID = "hybrid version: vLLM refuses PEFT adapters with modules_to_save"
FULL = ("full version: vLLM serves a full fine-tune only as a model of its own (set [plugins.vllm] full_command "
        "or full_urls to give it one)")


class VllmRefused(PersonaeError):
    """A vLLM server refused a request or an adapter; the message is the server's."""

    http_status = 502
    code = "upstream_error"


def vllm_name(label: str) -> str:
    """The name a registry version has in vLLM: 'lora:pixel@3' -> 'pixel@3'."""
    return label.split(":", 1)[-1]


def token_logprobs(block: dict | None, top: int, skip: set[int]) -> list[TokenLogprob]:
    """vLLM's completions logprobs block (tokens as 'token_id:N') as TokenLogprobs; tokens in `skip` left out."""
    if not block:
        return []
    scored = []
    for token, logprob, alternatives in zip(block.get("tokens") or [], block.get("token_logprobs") or [],
                                            block.get("top_logprobs") or [None] * len(block.get("tokens") or [])):
        token_id = int(str(token).rpartition(":")[2])
        if token_id in skip:
            continue
        # vLLM adds the sampled token to the top ones when it is not among them: keep the `top` likeliest.
        ranked = sorted(((int(k.rpartition(":")[2]), v) for k, v in (alternatives or {}).items()),
                        key=lambda pair: -pair[1])[:top]
        scored.append(TokenLogprob(token_id, logprob if logprob is not None else float("-inf"), ranked))
    return scored


def completion_body(request: Request, model: str) -> dict:
    """The /v1/completions request for one Request: the prompt as token ids, every sampling setting."""
    s = request.sampling
    body = {
        "model": model, "prompt": list(request.input_ids), "stream": True,
        "stream_options": {"include_usage": True}, "max_tokens": s.max_new_tokens,
        "temperature": s.temperature, "top_p": s.top_p, "repetition_penalty": s.repetition_penalty,
        "stop": list(s.stop), "min_tokens": s.min_new_tokens, "skip_special_tokens": True,
    }
    if s.seed is not None:  # None means "random each reply", as locally
        body["seed"] = s.seed
    if s.logit_bias:
        body["logit_bias"] = {str(token): bias for token, bias in s.logit_bias.items()}
    if s.response_format:  # vLLM's completions take OpenAI's response_format and constrain the output themselves
        body["response_format"] = s.response_format
    if s.logprobs is not None:
        # vLLM's logprobs are the model's own too (raw_logprobs, its default); token ids, not text, come back.
        body["logprobs"] = s.logprobs
        body["return_tokens_as_token_ids"] = True
    # Settings newer SamplingSettings carry, where vLLM has the same knob (repeat_last_n, DRY and the local
    # degeneration guard have none: vLLM's repetition penalty looks at the whole prompt and reply).
    for ours, theirs in (("top_k", "top_k"), ("min_p", "min_p"), ("frequency_penalty", "frequency_penalty"),
                         ("presence_penalty", "presence_penalty")):
        value = getattr(s, ours, None)
        if value is not None:
            body[theirs] = value if ours != "top_k" or value > 0 else -1  # our 0 = off is vLLM's -1
    return body


class VllmGenerator:
    """The Generator protocol over one or more vLLM OpenAI-compatible servers."""

    def __init__(self, settings, base, config, urls: list[str], server=None):
        self.settings, self.base, self.config, self.server = settings, base, config, server
        headers = {"Authorization": f"Bearer {config.api_key}"} if config.api_key else {}
        self.client = httpx.Client(headers=headers, timeout=httpx.Timeout(config.request_timeout, connect=5.0),
                                   limits=httpx.Limits(max_connections=None, max_keepalive_connections=64))
        self.pool = EndpointPool(urls, self.client, config.retry_dead)
        self._lock = threading.Lock()
        self._adapters: dict[str, Path] = {}  # label -> folder, served by vLLM
        self._local: dict[str, str] = {}  # label -> why the local generator serves it
        self._fallback = None
        self.full = FullEndpoints(config, self.client, Path(config.log_dir or settings.data_path / "logs"),
                                  self.local)
        self._outstanding = 0
        self._closed = False
        # End-of-sequence has no logprob entry locally either.
        eos = getattr(getattr(base, "tokenizer", None), "eos_token_id", None)
        self._end_tokens = {eos} if isinstance(eos, int) else set()
        if getattr(settings, "dry_multiplier", 0):
            log.warning("backend vllm: dry_multiplier is set, but vLLM has no DRY penalty; replies it serves "
                        "are sampled without it")
        alive = [self.pool.probe(e) for e in self.pool.endpoints]
        if not any(alive):
            first = self.pool.endpoints[0]
            self.client.close()
            raise BackendUnavailable(f"vLLM server {first.url} is unreachable ({first.error}); start it, or fix "
                                     "[plugins.vllm] urls")
        log.info("backend vllm: %d of %d endpoint(s) serving", sum(alive), len(alive))

    # --- weights ----------------------------------------------------------------------

    def local(self):
        """The local generator for versions vLLM cannot serve (built on first need)."""
        with self._lock:
            if self._fallback is None:
                from runtime.chat.build import backends
                from runtime.plugins import get_plugin_manager

                self._fallback = backends(get_plugin_manager(self.settings.plugins_dir))["local"](
                    self.settings, self.base)
            return self._fallback

    def load_adapter(self, name: str, folder) -> None:
        """Load a LoRA version into every live endpoint; a hybrid one goes to the local generator instead."""
        folder = Path(folder).resolve()
        config = json.loads((folder / "adapter_config.json").read_text())
        if config.get("modules_to_save"):
            self._serve_locally(name, HYBRID)
            self.local().load_adapter(name, folder)
            return
        self._adapters[name] = folder
        try:
            for endpoint in self.pool.candidates():
                self._load_on(endpoint, name)
        except VllmRefused as refused:  # e.g. a composite above --max-lora-rank: still servable here
            del self._adapters[name]
            self._serve_locally(name, f"vLLM refused it: {refused}")
            self.local().load_adapter(name, folder)

    def _serve_locally(self, name: str, reason: str) -> None:
        self._local[name] = reason
        log.warning("%s is served by the local generator, not vLLM (%s)", name, reason)

    def _load_on(self, endpoint: Endpoint, name: str) -> None:
        """Make one endpoint hold an adapter (it may have restarted and forgotten it)."""
        lora = vllm_name(name)
        if lora in endpoint.adapters:
            return
        body = {"lora_name": lora, "lora_path": str(self._adapters[name])}
        try:
            answer = self.client.post(endpoint.url + "/v1/load_lora_adapter", json=body)
        except httpx.TransportError as error:
            self.pool.mark_dead(endpoint, error)
            return
        if answer.status_code != 200 and "already been loaded" not in answer.text:
            raise VllmRefused(f"vLLM at {endpoint.url} refused adapter {lora} ({server_message(answer)}); "
                              "is it started with --enable-lora, a large enough --max-lora-rank, and "
                              "VLLM_ALLOW_RUNTIME_LORA_UPDATING=True?")
        endpoint.adapters.add(lora)
        log.info("adapter %s loaded on %s", lora, endpoint.url)

    def unload_adapter(self, name: str, forget: bool = True, wait: bool = True) -> None:
        """Unload a version from every endpoint holding it (or from the local generator)."""
        if name in self._local:
            if forget:
                del self._local[name]
            self.local().unload_adapter(name, forget=forget, wait=wait)
            return
        if self._adapters.pop(name, None) is None:
            return
        lora = vllm_name(name)
        for endpoint in self.pool.endpoints:
            if lora in endpoint.adapters:
                endpoint.adapters.discard(lora)
                try:
                    self.client.post(endpoint.url + "/v1/unload_lora_adapter", json={"lora_name": lora})
                except httpx.TransportError as error:
                    self.pool.mark_dead(endpoint, error)
        log.info("adapter %s unloaded from vLLM", lora)

    def load_model(self, name: str, loader=None) -> None:
        """A full version: on a vLLM endpoint of its own when configured, else by the local generator."""
        if self.full.configured(name) and hasattr(loader, "materialise"):
            self.full.add(name, loader)
            return
        self._full_locally(name, FULL, loader)

    def _full_locally(self, name: str, reason: str, loader) -> None:
        self._serve_locally(name, reason)
        self.local().load_model(name, loader)

    def unload_model(self, name: str, forget: bool = True, wait: bool = True) -> None:
        self.full.remove(name)
        if self._local.pop(name, None) is not None or not forget:
            self.local().unload_model(name, forget=forget, wait=wait)

    def knows(self, name: str) -> bool:
        if name in self._local:
            return self._fallback is not None and self._fallback.knows(name)
        return name == BASE_ADAPTER or name in self._adapters or self.full.get(name) is not None

    def where(self, name: str) -> str:
        """Which backend serves these weights: 'vllm', 'vllm (own endpoint URL)' or 'local (why)'."""
        if name in self._local:
            return f"local ({self._local[name]})"
        full = self.full.get(name)
        return full.describe() if full is not None else "vllm"

    # --- requests ---------------------------------------------------------------------

    def submit(self, request: Request) -> ReplyStream:
        """Send a request to the least busy live endpoint and stream its reply; busy or unreachable: raise."""
        if self._closed:
            raise RuntimeError("the vLLM backend is closed")
        full, pool = self.full.get(request.adapter), self.pool
        if full is not None:
            if not full.ready.wait(self.config.start_timeout + 60):
                raise BackendUnavailable(f"the vLLM server for {request.adapter} is still starting; send the "
                                         "message again in a while")
            pool = self.full.route(full)  # None: its endpoint is down, starting again, or over the cap
            if pool is None:
                return self._submit_locally(request, full.fallback)
        if request.adapter in self._local:
            return self._submit_locally(request, self._local[request.adapter])
        with self._lock:
            if self._outstanding >= self.settings.max_queue:
                raise GeneratorBusy(retry_after=1 + self._outstanding / max(1, len(self.pool.endpoints)) / 8)
            self._outstanding += 1
        try:
            return self._send(request, pool)
        except BaseException as error:
            with self._lock:
                self._outstanding -= 1
            if full is None or not isinstance(error, BackendUnavailable):
                raise
        # A full version's own endpoint did not answer (e.g. its server died a moment ago): local, saying why.
        self.full.unanswered(full, pool)
        return self._submit_locally(request, full.fallback)

    def _submit_locally(self, request: Request, reason: str) -> ReplyStream:
        stream = self.local().submit(request)
        stream.served_by = {"backend": "local", "fallback": reason}
        return stream

    def _send(self, request: Request, pool: EndpointPool) -> ReplyStream:
        """To the least busy live endpoint of the pool (the base's, or a full version's own)."""
        busy = None
        for endpoint in pool.candidates():
            pool.acquire(endpoint)
            try:
                response = self._post(endpoint, request, pool)
            except BaseException:
                pool.release(endpoint)
                raise
            if response is None:  # the endpoint is down: taken out, try the next
                pool.release(endpoint)
                continue
            if response.status_code in (429, 503):  # vLLM (or a proxy before it) is overloaded
                busy = GeneratorBusy(retry_after=float(response.headers.get("retry-after", 1) or 1))
                self._discard(response, endpoint, pool)
                continue
            if response.status_code != 200:
                self._discard(response, endpoint, pool)
                raise VllmRefused(f"vLLM at {endpoint.url} refused the request ({server_message(response)})")
            stream = ReplyStream(request)
            stream.served_by = {"backend": "vllm", "endpoint": endpoint.url}
            threading.Thread(target=self._read, args=(endpoint, response, stream, pool), daemon=True,
                             name=f"vllm-reply-{endpoint.url}").start()
            return stream
        if busy is not None:
            raise busy
        raise pool.unavailable()

    def _post(self, endpoint: Endpoint, request: Request, pool: EndpointPool) -> httpx.Response | None:
        """Open the streamed completion (its adapter loaded there first); None when the endpoint is down."""
        # A full version's own endpoint serves it as its model: no adapter to load there.
        lora = pool is self.pool and request.adapter != BASE_ADAPTER
        for attempt in range(2):
            if lora:
                if request.adapter not in self._adapters:
                    raise VllmRefused(f"weights {request.adapter} are not loaded into the vLLM backend")
                self._load_on(endpoint, request.adapter)
                if not endpoint.alive:
                    return None
            model = vllm_name(request.adapter) if lora else endpoint.model
            try:
                response = self.client.send(
                    self.client.build_request("POST", endpoint.url + "/v1/completions",
                                              json=completion_body(request, model)), stream=True)
            except httpx.TransportError as error:
                pool.mark_dead(endpoint, error)
                return None
            if response.status_code == 404 and attempt == 0 and lora:
                # The server restarted since we loaded the adapter there: load it again, once.
                response.read()
                response.close()
                endpoint.adapters.discard(model)
                continue
            return response
        return response

    def _discard(self, response: httpx.Response, endpoint: Endpoint, pool: EndpointPool) -> None:
        response.read()
        response.close()
        pool.release(endpoint)

    def _read(self, endpoint: Endpoint, response: httpx.Response, stream: ReplyStream, pool: EndpointPool) -> None:
        """Move a server-sent-events reply into the stream; a caller who leaves closes the request."""
        reason, error, done = None, None, False
        try:
            for line in response.iter_lines():
                if stream.cancelled.is_set():
                    break  # closing the response makes vLLM abort the request
                if not line.startswith("data:"):
                    continue
                data = line[5:].strip()
                if data == "[DONE]":
                    done = True
                    break
                chunk = json.loads(data)
                if "error" in chunk:
                    error = VllmRefused(f"vLLM at {endpoint.url}: {chunk['error'].get('message', chunk['error'])}")
                    break
                if chunk.get("usage"):
                    stream.completion_tokens = chunk["usage"].get("completion_tokens", 0)
                for choice in chunk.get("choices") or []:
                    if stream.request.sampling.logprobs is not None:  # before the text, which a reader may await
                        stream.logprobs += token_logprobs(choice.get("logprobs"), stream.request.sampling.logprobs,
                                                          self._end_tokens)
                    if choice.get("text"):
                        stream.push(choice["text"])
                    reason = choice.get("finish_reason") or reason
        except (httpx.HTTPError, OSError, ValueError) as problem:
            if not stream.cancelled.is_set():
                pool.mark_dead(endpoint, problem)
                error = BackendUnavailable(f"vLLM endpoint {endpoint.url} went away mid-reply ({describe(problem)}); "
                                           "send the message again")
        finally:
            response.close()
            pool.release(endpoint)
            with self._lock:
                self._outstanding -= 1
        if stream.cancelled.is_set():
            stream.finish("cancelled")
        elif error is None and not done:
            stream.finish("error", BackendUnavailable(f"vLLM endpoint {endpoint.url} ended a reply early; "
                                                      "send the message again"))
        elif error is None and reason == "abort":
            stream.finish("error", VllmRefused(f"vLLM at {endpoint.url} aborted the reply"))
        else:
            stream.finish("error" if error else (reason or "stop"), error)

    def close(self) -> None:
        """Unload our adapters and stop using the servers (stopping one we started); replies in flight end."""
        if self._closed:
            return
        self._closed = True
        self.full.close()  # first: its keepers may still hand a version to the local generator
        if self._fallback is not None:
            self._fallback.close()
        for name in list(self._adapters):  # servers may outlive us: leave them as we found them
            self.unload_adapter(name)
        self.client.close()
        if self.server is not None:
            self.server.stop()


def server_message(response: httpx.Response) -> str:
    """The error a vLLM server put in its answer, in one line."""
    try:
        body = response.json()
        message = body.get("error", {}).get("message") if isinstance(body.get("error"), dict) else body.get("message")
        message = message or body.get("detail") or response.text
    except ValueError:
        message = response.text
    return f"HTTP {response.status_code}: {' '.join(str(message).split())[:300]}"
