"""Constrained decoding for OpenAI's response_format: only tokens that keep the reply valid JSON (lm-format-enforcer)."""

from __future__ import annotations

import threading
import weakref

from runtime.errors import PersonaeError

# The schema lm-format-enforcer is given for response_format {"type": "json_object"}: any JSON object.
ANY_OBJECT = {"type": "object"}
SUPPORTED = "{\"type\": \"text\"}, {\"type\": \"json_object\"} or {\"type\": \"json_schema\", \"json_schema\": {\"schema\": {...}}}"

_tables: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()
_tables_lock = threading.Lock()


class BadResponseFormat(PersonaeError, ValueError):
    """A response_format this server cannot follow; the message says what it can."""


def schema_of(response_format: dict | None) -> dict | None:
    """The JSON schema a response_format asks for (None: plain text); a BadResponseFormat names what is wrong."""
    if not response_format:
        return None
    kind = response_format.get("type") if isinstance(response_format, dict) else None
    if kind in (None, "text"):
        return None
    if kind == "json_object":
        return ANY_OBJECT
    if kind == "json_schema":
        spec = response_format.get("json_schema")
        schema = spec.get("schema") if isinstance(spec, dict) else None
        if not isinstance(schema, dict):
            raise BadResponseFormat("response_format json_schema needs json_schema.schema, a JSON schema object")
        return schema
    raise BadResponseFormat(f"response_format type {kind!r} is not supported; send {SUPPORTED}")


def check_schema(schema: dict | None) -> None:
    """Raise BadResponseFormat when lm-format-enforcer cannot follow this schema (before any generation starts)."""
    if schema is not None:
        _parser(schema)


def _parser(schema: dict):
    from lmformatenforcer import JsonSchemaParser

    try:
        return JsonSchemaParser(schema)
    except Exception as error:  # lm-format-enforcer cannot read this schema
        raise BadResponseFormat(f"response_format's JSON schema cannot be used: {error}") from None


def warm(tokenizer) -> None:
    """Build the tokenizer's vocabulary table now (a caller's thread), not inside the generator's decode loop."""
    _tokenizer_table(tokenizer)


def _tokenizer_table(tokenizer):
    """lm-format-enforcer's view of a tokenizer's vocabulary (built once per tokenizer: ~1-2 s for 49k tokens)."""
    with _tables_lock:
        table = _tables.get(tokenizer)
        if table is None:
            table = _tables[tokenizer] = _build_table(tokenizer)
        return table


def _build_table(tokenizer):
    """lm-format-enforcer's build_token_enforcer_tokenizer_data, which cannot be imported under transformers 5
    (it imports transformers.tokenization_utils, gone in 5.x); same table, decoded in two batches."""
    from lmformatenforcer import TokenEnforcerTokenizerData

    size = len(tokenizer)
    special = set(tokenizer.all_special_ids)
    tokens = [t for t in range(size) if t not in special]
    zero = tokenizer.encode("0", add_special_tokens=False)[-1]
    # Decoded after "0" (its first character dropped) a word-start token keeps its leading space.
    after_zero = [text[1:] for text in tokenizer.batch_decode([[zero, t] for t in tokens])]
    alone = tokenizer.batch_decode([[t] for t in tokens])
    regular = [(t, text, len(text) > len(plain)) for t, text, plain in zip(tokens, after_zero, alone)]

    def decode(ids: list[int]) -> str:
        return tokenizer.decode(ids).rstrip("\ufffd")  # an unfinished UTF-8 character is not text yet

    return TokenEnforcerTokenizerData(regular, decode, tokenizer.eos_token_id, False, size)


class JsonLogitsProcessor:
    """A logits processor that masks every token that would make the reply stop being a prefix of valid JSON."""

    def __init__(self, schema: dict, tokenizer, prompt_length: int):
        from lmformatenforcer import TokenEnforcer

        self.enforcer = TokenEnforcer(_tokenizer_table(tokenizer), _parser(schema))
        self.prompt_length = prompt_length

    def __call__(self, input_ids, scores):
        import torch

        # The enforcer keys its state on the whole sequence; the prompt is its (unparsed) start.
        allowed = self.enforcer.get_allowed_tokens(input_ids[0].tolist()).allowed_tokens
        allowed = [t for t in allowed if t < scores.shape[-1]]
        mask = torch.full_like(scores, float("-inf"))
        mask[:, allowed] = 0
        return scores + mask
