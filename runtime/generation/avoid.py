"""What a re-sample after a copy must not say again: the copied reply's token n-grams, banned for that attempt only.

When the guard finds that a reply repeats an earlier reply of the character, the one re-sample from the same
prompt with a new seed usually copies again (the model wants to say it; bench transcripts: both attempts
"Aye, Captain! I'm going to tell you about something else..."). So the retry gets a ban (transformers'
NoBadWordsLogitsProcessor, -inf): after the last NGRAM-1 tokens of a run that the copied reply or the thrown-away
attempt contains, the token that would continue it may not come. Two exemptions keep the retry fluent and
in character, where a plain ban (like DRY over the whole prompt) broke "Captain Mara Voss" into invented names:

* only tokens that begin a word are banned, so a word is never cut into an invented one mid-way; the model
  must choose another next word instead;
* runs the prompt also holds outside the copied reply (the card, the user's turns, other replies: the
  character's name, its set phrases) stay allowed.
"""

from __future__ import annotations

from collections import Counter

NGRAM = 5  # a run of NGRAM-1 tokens from the copied text may not go on with its next word

_word_starts: dict[int, frozenset] = {}


def word_starts(tokenizer) -> frozenset:
    """Ids of tokens that begin a word: their text starts with a space or is not a letter or digit (cached)."""
    key = id(tokenizer)
    if key not in _word_starts:
        ids = list(range(len(tokenizer)))
        texts = tokenizer.batch_decode([[i] for i in ids])
        _word_starts[key] = frozenset(i for i, text in zip(ids, texts) if text and not text[0].isalnum())
    return _word_starts[key]


def _grams(ids: list[int]) -> Counter:
    return Counter(tuple(ids[i:i + NGRAM]) for i in range(len(ids) - NGRAM + 1))


def banned_runs(prompt: list[int], copied: list[int], attempt: list[int], starts: frozenset) -> list[list[int]]:
    """The n-grams a retry may not complete: the copied reply's and the attempt's, less shared ones and mid-word ends.

    `prompt` holds the copied reply once (it is in the history); a run found there more often than in the copied
    reply itself is shared language and stays allowed.
    """
    in_prompt, in_copied = _grams(prompt), _grams(copied)
    candidates = set(in_copied) | set(_grams(attempt))
    return sorted(list(run) for run in candidates
                  if run[-1] in starts and in_prompt[run] <= in_copied[run])


def copy_ban(row, verdict, tokenizer) -> list[list[int]]:
    """The runs to ban when `verdict` is a copy of one of the row's earlier replies, else none."""
    earlier = row.stream.request.earlier
    if tokenizer is None or not 0 <= verdict.copied < len(earlier):
        return []
    ids = row.ids.tolist()
    copied = tokenizer.encode(earlier[verdict.copied], add_special_tokens=False)
    return banned_runs(ids[: row.prompt_length], copied, ids[row.prompt_length: row.length], word_starts(tokenizer))
