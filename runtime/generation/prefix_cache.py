"""Keys and values of recent prompts, so a prompt that starts the same way prefills only the rest.

Every chat with a character starts with the same card, and each turn of a chat repeats the
previous prompt before the new messages; on CPU that repeated prefill is most of the time to
first token (a 550-token card prompt takes ~1.3 s on SmolLM2). After each prefill the generator
stores the prompt's KV here, keyed by the weights that computed it (base, adapter or full model:
an adapter changes the keys and values); a new prompt reuses the longest stored common prefix.
Entries are evicted least recently used within a byte budget, and dropped when their weights are
replaced or unloaded.
"""

from __future__ import annotations

import collections
from dataclasses import dataclass

MIN_TOKENS = 64  # shorter shared prefixes are not worth a separate forward pass


@dataclass
class Prefix:
    """A stored prompt: its tokens and each layer's keys/values ([1, kv heads, tokens, head dim])."""

    weights: tuple
    tokens: object  # LongTensor [tokens]
    layers: list
    nbytes: int


class PrefixCache:
    """Recent prompts' KV per weights, bounded by bytes."""

    def __init__(self, budget_bytes: int, min_tokens: int = MIN_TOKENS):
        self.budget = int(budget_bytes)
        self.min_tokens = max(1, int(min_tokens))
        self._entries: collections.OrderedDict = collections.OrderedDict()  # id -> Prefix, oldest first
        self._next = 0
        self.bytes = 0
        self.stats = {"hits": 0, "misses": 0, "tokens_reused": 0}

    def __len__(self) -> int:
        return len(self._entries)

    def lookup(self, weights: tuple, prompt) -> tuple[int, Prefix | None]:
        """The longest stored prefix of `prompt` (a LongTensor) computed by these weights: (length, entry).

        At least the prompt's last token is left to compute (its logits pick the first reply token).
        """
        import torch

        best, best_length = None, 0
        limit = len(prompt) - 1
        for key, entry in self._entries.items():
            if entry.weights != weights:
                continue
            n = min(limit, len(entry.tokens))
            if n < self.min_tokens or n <= best_length:
                continue
            differ = torch.nonzero(prompt[:n] != entry.tokens[:n])
            length = int(differ[0]) if len(differ) else n
            if length > best_length:
                best, best_length, best_key = entry, length, key
        if best is None or best_length < self.min_tokens:
            self.stats["misses"] += 1
            return 0, None
        self._entries.move_to_end(best_key)
        self.stats["hits"] += 1
        self.stats["tokens_reused"] += best_length
        return best_length, best

    def store(self, weights: tuple, prompt, layers: list) -> None:
        """Keep a prompt's KV (copied); entries it extends are dropped, old ones go past the budget."""
        if self.budget <= 0 or len(prompt) < self.min_tokens:
            return
        nbytes = sum(k.numel() * k.element_size() + v.numel() * v.element_size() for k, v in layers)
        if nbytes > self.budget:
            return
        for key, entry in list(self._entries.items()):
            # A stored prompt that this one starts with (the previous turn, the same card) adds nothing.
            if entry.weights == weights and len(entry.tokens) <= len(prompt) and \
                    bool((prompt[: len(entry.tokens)] == entry.tokens).all()):
                self._remove(key)
        while self._entries and self.bytes + nbytes > self.budget:
            self._remove(next(iter(self._entries)))
        self._entries[self._next] = Prefix(weights, prompt.clone(), [(k.clone(), v.clone()) for k, v in layers],
                                           nbytes)
        self._next += 1
        self.bytes += nbytes

    def forget(self, model_key=None, adapter=None) -> None:
        """Drop the entries computed by a full model or an adapter (replaced or unloaded)."""
        for key, entry in list(self._entries.items()):
            if (model_key is not None and entry.weights[0] == model_key) or \
                    (adapter is not None and entry.weights[1] == adapter):
                self._remove(key)

    def _remove(self, key) -> None:
        self.bytes -= self._entries.pop(key).nbytes
