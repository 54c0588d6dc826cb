"""Incremental detokenisation and stop strings for streamed replies."""

from __future__ import annotations

REPLACEMENT = "\ufffd"  # what a tokenizer decodes half a UTF-8 character to


class Detokenizer:
    """Turns tokens into text pieces one token at a time, as the full decode would read.

    Decoding each token alone breaks multi-byte characters (byte-level BPE) and drops
    sentencepiece's leading spaces; decoding a short window of earlier tokens together with the
    new ones and emitting only the difference keeps both right (the vLLM / TGI method).
    """

    def __init__(self, tokenizer, skip_special_tokens: bool = True):
        self.tokenizer = tokenizer
        self.skip = skip_special_tokens
        self.ids: list[int] = []
        self.prefix_offset = 0
        self.read_offset = 0

    def _decode(self, ids) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=self.skip, clean_up_tokenization_spaces=False)

    def add(self, token: int) -> str:
        """The new text this token completes ("" while a character is still incomplete)."""
        self.ids.append(token)
        prefix = self._decode(self.ids[self.prefix_offset:self.read_offset])
        full = self._decode(self.ids[self.prefix_offset:])
        if len(full) > len(prefix) and not full.endswith(REPLACEMENT):
            self.prefix_offset, self.read_offset = self.read_offset, len(self.ids)
            return full[len(prefix):]
        return ""

    def flush(self) -> str:
        """Whatever text is still held back (an incomplete character at the very end)."""
        prefix = self._decode(self.ids[self.prefix_offset:self.read_offset])
        full = self._decode(self.ids[self.prefix_offset:])
        self.prefix_offset = self.read_offset = len(self.ids)
        return full[len(prefix):] if len(full) > len(prefix) else ""


class StopText:
    """Holds back text that may be the start of a stop string; cuts the reply at a stop string."""

    def __init__(self, stops: list[str]):
        self.stops = [s for s in stops if s]
        self.longest = max((len(s) for s in self.stops), default=0)
        self.text = ""  # everything decoded so far
        self.emitted = 0  # how much of it the caller has seen
        self.stopped = False

    def feed(self, piece: str) -> str:
        """Add decoded text; return what may be shown now (nothing past a stop string)."""
        if self.stopped:
            return ""
        self.text += piece
        if not self.stops:
            out, self.emitted = self.text[self.emitted:], len(self.text)
            return out
        start = max(0, self.emitted - self.longest)
        cut = min((i for i in (self.text.find(s, start) for s in self.stops) if i != -1), default=-1)
        if cut != -1:
            self.stopped = True
            out = self.text[self.emitted:cut]
            self.text, self.emitted = self.text[:cut], cut
            return out
        hold = self._held_back()
        end = max(self.emitted, len(self.text) - hold)
        out, self.emitted = self.text[self.emitted:end], end
        return out

    def flush(self) -> str:
        """The held-back tail when the reply ends without a stop string."""
        out, self.emitted = self.text[self.emitted:], len(self.text)
        return out

    def _held_back(self) -> int:
        """Length of the longest tail of the text that is a proper prefix of a stop string."""
        for size in range(min(self.longest - 1, len(self.text)), 0, -1):
            tail = self.text[-size:]
            if any(stop.startswith(tail) for stop in self.stops):
                return size
        return 0
