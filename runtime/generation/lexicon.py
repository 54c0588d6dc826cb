"""Is this an English word? wordfreq's frequency list, loaded on first use (the guard's invented-word signal)."""

from __future__ import annotations

import functools


@functools.cache
def _zipf():
    """wordfreq's zipf_frequency, or None where wordfreq is not installed (the signal is then off)."""
    try:
        from wordfreq import zipf_frequency
    except ImportError:
        return None
    return zipf_frequency


@functools.lru_cache(maxsize=65536)
def known_word(word: str) -> bool | None:
    """Whether English uses this word at all (any frequency); None when no word list is installed."""
    zipf = _zipf()
    if zipf is None:
        return None
    return zipf(word.lower(), "en") > 0
