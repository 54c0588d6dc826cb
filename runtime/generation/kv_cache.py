"""A KV cache that appends into spare room instead of concatenating the whole cache every step.

transformers' DynamicLayer grows by `torch.cat` on each decode step, which copies every row's
keys and values once per token: with 16 chats of ~650 cached tokens that copy took half of a
decode step on CPU. GrowingLayer keeps a buffer with room for CHUNK more positions and writes
each step's keys/values into it; it reallocates only when the room runs out (or when the batch's
rows change, which already rebuilds the tensors). Attention reads a view of the filled part.
"""

from __future__ import annotations

CHUNK = 64  # positions of spare room per reallocation


def _append(buffer, length: int, new):
    """Write `new` after the first `length` positions of `buffer`, growing it if it is short of room."""
    added = new.shape[-2]
    if buffer is None or buffer.shape[0] != new.shape[0] or length + added > buffer.shape[-2]:
        grown = new.new_empty(new.shape[0], new.shape[1], length + added + CHUNK, new.shape[3])
        if length:
            grown[:, :, :length] = buffer[:, :, :length]
        buffer = grown
    buffer[:, :, length: length + added] = new
    return buffer, length + added


class _FilledPart:
    """`keys` / `values`: a view of the filled part of a buffer; assigning a tensor makes it the (full) buffer.

    An assigned tensor (rows merged or dropped by the generator) has no spare room, so the next
    append copies it into a fresh buffer rather than writing into memory someone else may share.
    """

    def __set_name__(self, owner, name):
        self.buffer, self.length = f"_{name}_buffer", f"_{name}_length"

    def __get__(self, layer, owner=None):
        if layer is None:
            return self
        buffer = layer.__dict__.get(self.buffer)
        return None if buffer is None else buffer[:, :, : layer.__dict__[self.length]]

    def __set__(self, layer, tensor):
        real = tensor is not None and tensor.dim() == 4  # lazy initialisation assigns empty 1-D tensors
        layer.__dict__[self.buffer] = tensor if real else None
        layer.__dict__[self.length] = tensor.shape[-2] if real else 0


def _layer_class():
    from transformers.cache_utils import DynamicLayer

    class GrowingLayer(DynamicLayer):
        """A DynamicLayer whose keys/values are views of buffers with spare room at the end."""

        keys = _FilledPart()
        values = _FilledPart()

        def update(self, key_states, value_states, *args, **kwargs):
            if not self.is_initialized:
                self.lazy_initialization(key_states, value_states)
            self._keys_buffer, self._keys_length = _append(self._keys_buffer, self._keys_length, key_states)
            self._values_buffer, self._values_length = _append(self._values_buffer, self._values_length,
                                                               value_states)
            return self.keys, self.values

        def get_seq_length(self) -> int:
            return self._keys_length if self.is_initialized else 0

    GrowingLayer.__module__, GrowingLayer.__qualname__ = __name__, "GrowingLayer"
    return GrowingLayer


_LAYER = None


def full_attention_only(model) -> bool:
    """Whether every layer of the model keeps all positions (no sliding window, no shared or recurrent layers)."""
    from transformers.cache_utils import get_layer_types_and_kwargs

    layer_types, _ = get_layer_types_and_kwargs(model.config.get_text_config(decoder=True))
    return all(kind == "full_attention" for kind in layer_types)


def new_cache(model, full_attention: bool | None = None):
    """An empty cache for one prefill of `model`: growing layers where every layer is full attention.

    Callers that already know `full_attention_only(model)` pass it, so the config is not read per prefill.
    """
    global _LAYER
    from transformers.cache_utils import Cache, DynamicCache

    if full_attention is None:
        full_attention = full_attention_only(model)
    if not full_attention:
        return DynamicCache(config=model.config)  # sliding, hybrid or shared layers: transformers' own handling
    if _LAYER is None:
        _LAYER = _layer_class()
    cache = DynamicCache.__new__(DynamicCache)  # a DynamicCache in every respect but its layer class
    Cache.__init__(cache, layer_class_to_replicate=_LAYER)
    return cache
